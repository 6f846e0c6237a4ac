// What went wrong, in plain words: the envelope's codes and a failed task's failCode.

/** The labels the page gives the request's fields, for a 422 that names one. */
const FIELD_LABELS = {
  "input.prompt": "Prompt",
  "input.image_input": "Reference images",
  "input.aspect_ratio": "Aspect ratio",
  "input.resolution": "Resolution",
  "input.output_format": "Format",
  callBackUrl: "Callback URL",
  model: "Model",
};

/** `input.image_input[2]: not an image` -> ["input.image_input", "2", "not an image"]. */
const NAMED_FIELD = /^([A-Za-z_.]+)(?:\[(\d+)\])?: (.*)$/s;

/** The field a 422 names (`input.image_input[2]: ...` names input.image_input), or null. */
export function invalidField(error) {
  const named = error.code === 422 ? NAMED_FIELD.exec(error.msg) : null;
  return named && named[1] in FIELD_LABELS ? named[1] : null;
}

function capitalised(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

/**
 * An ApiError in plain words. `cost` and `balance` (credits) complete a 402 for a task
 * the visitor tried to start.
 */
export function describe(error, { cost = null, balance = null } = {}) {
  const msg = error.msg ?? String(error);
  switch (error.code) {
    case 0:
      return "The server cannot be reached. Check the connection and try again.";
    case 401:
      return `This API key was refused (${msg}). Sign in again with a valid key.`;
    case 402:
      if (msg.startsWith("insufficient credits") && balance !== null && cost !== null) {
        return `Not enough credits: balance ${balance}, this costs ${cost}.`;
      }
      return `Not enough credits: ${msg}.`;
    case 404:
      return `Not found: ${msg}.`;
    case 422: {
      if (!invalidField(error)) return capitalised(msg);
      const [, name, index, rule] = NAMED_FIELD.exec(msg);
      const which = index === undefined ? "" : ` (number ${Number(index) + 1})`;
      return `${FIELD_LABELS[name]}${which}: ${rule}`;
    }
    case 429: {
      const wait = error.retryAfter ?? 1;
      const why = msg.startsWith("rate limit") ? "Too many requests" : capitalised(msg.split(";")[0]);
      return `${why}: try again in ${wait} s.`;
    }
    case 455:
      return `The service is under maintenance: ${msg}`;
    case 505:
      return `Not available here: ${msg}.`;
    default:
      return `The server failed (${error.code}): ${msg}`;
  }
}

const FAIL_REASONS = {
  400: "the request or an input image was refused",
  403: "blocked by the safety filters",
  500: "the image model failed",
  504: "the image model timed out",
};

/** Why a task failed, in plain words, with its failMsg. */
export function failure(record) {
  if (record.failMsg === "canceled") return "Canceled.";
  const reason = FAIL_REASONS[record.failCode] ?? `failCode ${record.failCode}`;
  return `Failed: ${reason}. ${record.failMsg}`;
}

/** The words for a state on a card or a thumbnail. */
export const STATE_WORDS = {
  waiting: "waiting",
  queuing: "queuing",
  generating: "generating",
  success: "done",
  fail: "failed",
};
