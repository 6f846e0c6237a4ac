// The visitor's API key: in sessionStorage only (this tab, until it closes or "Sign out"),
// never localStorage, a cookie or a URL; it leaves the page only as the Bearer header of
// the page's own API calls.

const STORAGE_NAME = "bananastand.apiKey";

export function currentKey() {
  return sessionStorage.getItem(STORAGE_NAME);
}

export function remember(key) {
  sessionStorage.setItem(STORAGE_NAME, key);
}

export function forget() {
  sessionStorage.removeItem(STORAGE_NAME);
}
