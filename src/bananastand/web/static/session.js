// The visitor's secrets: the API key and, for the operator view, the admin token. Both in
// sessionStorage only (this tab, until it closes or "Sign out"), never localStorage, a
// cookie or a URL; each leaves the page only as the Bearer header of the page's own calls.

/** Get, keep and drop one value of this tab's sessionStorage. */
function stored(name) {
  return {
    get: () => sessionStorage.getItem(name),
    set: (value) => sessionStorage.setItem(name, value),
    remove: () => sessionStorage.removeItem(name),
  };
}

const apiKey = stored("bananastand.apiKey");
const adminToken = stored("bananastand.adminToken");

export const currentKey = apiKey.get;
export const remember = apiKey.set;
export const currentAdminToken = adminToken.get;
export const rememberAdminToken = adminToken.set;
export const forgetAdminToken = adminToken.remove;

/** Signing out forgets both. */
export function forget() {
  apiKey.remove();
  adminToken.remove();
}
