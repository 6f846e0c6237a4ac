"""Callbacks: what is sent, how it is signed, when it is retried, and the sender.

The outbox row is written in the transaction that ends a task (``store/sql/tasks.py``);
the `sender.WebhookSender` runs wherever a worker runs and empties it:

- it claims due callbacks with a lease, so a sender killed mid-delivery leaves a row that
  the next claim sends again, with the same ``webhook-id`` (at-least-once);
- it sends through its own `SafeFetcher` (no private targets unless allow-listed, each
  name resolved and checked at every delivery, redirects never followed), so a slow
  receiver never holds a connection an ``image_input`` fetch needs;
- at most ``webhook_concurrency`` deliveries are in flight, at most
  ``webhook_per_host_concurrency`` per receiving host:port, and claiming skips saturated
  hosts: a receiver that hangs delays only its own callbacks;
- every attempt is stored; failures are retried on ``webhook_retry_schedule_seconds``
  with jitter, later if ``Retry-After`` asks; ``410 Gone`` stops. A delivery never
  touches the task;
- a callback to a host in ``callback_deny_hosts`` is never sent (no connection, no name
  lookup): it ends ``refused``, with one attempt saying why. That is judged at each
  delivery, so a change of the setting applies to every callback not yet sent.

The modules, by their job:

- ``signing``: the body and both schemes' signed headers, and new secrets;
- ``schedule``: what an attempt's answer means, when the next one is due, and which
  callbacks are never sent;
- ``sender``: the `WebhookSender`;
- ``account``: the account-facing side (`account.Webhooks`): secrets, the attempt log,
  resending.
"""
