// Following a task live: recordInfo's event stream read with fetch (the browser's
// EventSource cannot send an Authorization header), for at most MAX_STREAMS tasks at once
// (browsers open 6 connections per host, and the page still needs some for its other
// calls); the other tasks poll recordInfo until a stream is free.

import { api, apiUrl, send, unwrap, ApiError } from "./api.js";
import { isFinal } from "./records.js";

const MAX_STREAMS = 4;
const POLL_MS = 2000;
let openStreams = 0;


function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Calls `onRecord(record)` with each state of the task until it is final (or until the
 * optional `signal` aborts), and `onError(apiError)` when it cannot be followed (404, a
 * revoked key).
 * A stream that ends early (the server's time limit, a restart) is opened again.
 */
export async function follow(taskId, { onRecord, onError, signal = new AbortController().signal }) {
  let last = null;
  const seen = (record) => {
    last = record;
    onRecord(record);
  };
  while (!signal.aborted && !(last && isFinal(last))) {
    try {
      if (openStreams < MAX_STREAMS) {
        openStreams += 1;
        try {
          await stream(taskId, seen, signal);
        } finally {
          openStreams -= 1;
        }
      } else {
        seen(await api.record(taskId, signal));
        if (!isFinal(last)) await pause(POLL_MS, signal);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (!(error instanceof ApiError) || ![0, 429, 500].includes(error.code)) {
        onError(error);
        return;
      }
      // Worth another try: the server restarting, a rate limit, a dropped connection.
      await pause(error.retryAfter ? error.retryAfter * 1000 : POLL_MS, signal);
    }
  }
}

/** One event stream, until the server ends it; errors before it starts are envelopes. */
async function stream(taskId, onRecord, signal) {
  const response = await send(apiUrl("api/v1/jobs/recordInfo", { taskId }), {
    headers: { Accept: "text/event-stream" },
    signal,
  });
  if (!(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
    // An envelope: an error, or a server that offers no streams (its first poll).
    onRecord(await unwrap(response));
    await pause(POLL_MS, signal);
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const record = eventData(buffered.slice(0, end));
        buffered = buffered.slice(end + 2);
        if (record) onRecord(record);
      }
    }
  } catch (error) {
    if (signal.aborted) return;
    throw new ApiError(0, `the stream broke off (${error.message})`);
  } finally {
    reader.releaseLock();
  }
}

/** The record an event carries (its `data:` lines), or null for a comment (keep-alive). */
function eventData(block) {
  const data = block
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""));
  return data.length ? JSON.parse(data.join("\n")) : null;
}
