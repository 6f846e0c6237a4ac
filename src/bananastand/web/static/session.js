// The visitor's secrets: the API key and, for the operator view, the admin token. Both in
// sessionStorage only (this tab, until it closes or "Sign out"), never localStorage, a
// cookie or a URL; each leaves the page only as the Bearer header of the page's own calls.

const KEY_NAME = "bananastand.apiKey";
const ADMIN_NAME = "bananastand.adminToken";

export function currentKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function remember(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function forget() {
  sessionStorage.removeItem(KEY_NAME);
  sessionStorage.removeItem(ADMIN_NAME);
}

export function currentAdminToken() {
  return sessionStorage.getItem(ADMIN_NAME);
}

export function rememberAdminToken(token) {
  sessionStorage.setItem(ADMIN_NAME, token);
}

export function forgetAdminToken() {
  sessionStorage.removeItem(ADMIN_NAME);
}
