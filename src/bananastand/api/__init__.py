"""HTTP layer: routes translate requests to domain calls and domain errors to envelopes."""
