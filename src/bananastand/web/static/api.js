// The public JSON API, as any client calls it: the visitor's key as a Bearer header, the
// {code, msg, data} envelope (HTTP 200 even for errors) turned into data or an ApiError.
// The operator view's calls (`admin`) send the admin token instead.

import { currentAdminToken, currentKey } from "./session.js";

export class ApiError extends Error {
  /** `code`: the envelope's (0: the server could not be reached); `retryAfter`: seconds. */
  constructor(code, msg, retryAfter = null) {
    super(msg);
    this.code = code;
    this.msg = msg;
    this.retryAfter = retryAfter;
  }
}

/** A URL of this server's API, relative to the page (which may live under a proxy's prefix). */
export function apiUrl(path, query = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url;
}

/** Sends a request with `token` (the API key unless told); the fetch's own failure
 * (server down, offline) is an ApiError of code 0. */
export async function send(url, init = {}, token = currentKey()) {
  const headers = { Authorization: `Bearer ${token}`, ...init.headers };
  try {
    return await fetch(url, { ...init, headers, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "the server cannot be reached");
  }
}

/** The envelope's data, or an ApiError carrying its code, msg and Retry-After. */
export async function unwrap(response) {
  let answer;
  try {
    answer = await response.json();
  } catch {
    throw new ApiError(500, `the server answered HTTP ${response.status} without an envelope`);
  }
  if (answer.code !== 200) {
    const wait = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    throw new ApiError(answer.code, answer.msg ?? "", Number.isNaN(wait) ? null : wait);
  }
  return answer.data;
}

/** `post: true` sends a POST without a body. */
async function call(path, { query, body, form, signal, post = false, token } = {}) {
  const init = { signal };
  if (form) Object.assign(init, { method: "POST", body: form });
  else if (body !== undefined) {
    Object.assign(init, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  } else if (post) init.method = "POST";
  return unwrap(await send(apiUrl(path, query), init, token));
}

const asOperator = (path, options = {}) => call(path, { ...options, token: currentAdminToken() });
const segment = encodeURIComponent;

export const api = {
  models: () => call("api/v1/models"),
  credit: () => call("api/v1/chat/credit"),
  createTask: (body) => call("api/v1/jobs/createTask", { body }),
  record: (taskId, signal) => call("api/v1/jobs/recordInfo", { query: { taskId }, signal }),
  list: (query) => call("api/v1/jobs/list", { query }),
  callbacks: (taskId) => call("api/v1/jobs/callbacks", { query: { taskId } }),
  resendCallback: (taskId) => call("api/v1/jobs/callbacks/resend", { body: { taskId } }),
  ledger: (cursor) => call("api/v1/account/ledger", { query: { cursor } }),
  usage: (days) => call("api/v1/account/usage", { query: { days } }),
  keys: () => call("api/v1/account/keys"),
  revokeKey: (keyId) => call(`api/v1/account/keys/${segment(keyId)}/revoke`, { post: true }),
  webhookSecret: () => call("api/v1/account/webhook-secret"),
  rotateWebhookSecret: () => call("api/v1/account/webhook-secret/rotate", { post: true }),

  /** Uploads a reference image; each into a folder of its own, so that two files of one
   * name never replace each other. */
  upload(file) {
    const form = new FormData();
    form.append("file", file);
    form.append("uploadPath", `web/${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`);
    return call("api/file-stream-upload", { form });
  },
};

/** The operator's API under /admin/, with the admin token. */
export const admin = {
  accounts: () => asOperator("admin/accounts"),
  createAccount: (name) => asOperator("admin/accounts", { body: { name } }),
  grant: (accountId, amount, note) => asOperator(`admin/accounts/${segment(accountId)}/credits`, { body: { amount, note } }),
  setLimits: (accountId, limits) => asOperator(`admin/accounts/${segment(accountId)}/limits`, { body: limits }),
  createKey: (accountId, body) => asOperator(`admin/accounts/${segment(accountId)}/keys`, { body }),
  switches: () => asOperator("admin/switches"),
  maintenance: (on, message) => asOperator("admin/maintenance", { body: { on, message } }),
  switchModel: (model, enabled, accountId) =>
    asOperator(`admin/models/${segment(model)}`, { body: { enabled, accountId: accountId || null } }),
  queue: () => asOperator("admin/queue"),
};
