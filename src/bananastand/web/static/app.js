// The page's entry: signing in, the header, and the views behind hash routes
// (#/playground, #/gallery, #/task/ID, #/account, #/operator; another view is another
// entry of `makeViews`). The operator view needs no API key: signed out, #/operator shows
// it alone.

import { api, ApiError } from "./api.js";
import { h, replace, announce } from "./dom.js";
import { loadCatalogue } from "./models.js";
import { currentKey, remember, forget } from "./session.js";
import { describe } from "./words.js";
import { playgroundView } from "./playground.js";
import { galleryView } from "./gallery.js";
import { taskView } from "./task.js";
import { accountView } from "./account.js";
import { operatorView } from "./operator.js";

const main = document.getElementById("main");
const nav = document.querySelector(".nav");
const account = document.querySelector(".account");
const badge = document.querySelector(".badge");
const credits = document.querySelector(".credits");

let views = null;

/** The views, made once per sign-in and kept while others are shown: a card in the
 * playground keeps following its task while the gallery is open. */
function makeViews() {
  const playground = playgroundView({ onCreated: refreshCredits });
  const gallery = galleryView();
  const task = taskView({
    runAgain: (param) => open("#/playground").then(() => playground.fill(param)),
    useAsReference: (url) => open("#/playground").then(() => playground.useAsReference(url)),
  });
  const account = accountView({ onBalance: showCredits, onOwnKeyRevoked: signOut });
  return { playground, gallery, task, account, operator: operatorView() };
}

/** `#/task/ID` -> ["task", "ID"]; anything unknown is the playground. */
function route() {
  const [, name, argument] = /^#\/([a-z]+)(?:\/(.+))?$/.exec(location.hash) ?? [];
  return name in views ? [name, argument && decodeURIComponent(argument)] : ["playground", undefined];
}

/** Shows a route at once (a plain hash change would show it only after what the caller
 * does next, and take the focus away from it). */
async function open(hash) {
  history.pushState(null, "", hash);
  await showRoute();
}

async function showRoute() {
  if (!views) return showSignedOut();
  const [name, argument] = route();
  for (const [other, view] of Object.entries(views)) {
    if (other !== name) view.hide?.();
    view.element.hidden = other !== name;
  }
  for (const link of nav.querySelectorAll("a")) {
    if (link.hash === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = views[name];
  if (!view.element.isConnected) main.append(view.element);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · bananastand`;
  view.element.querySelector("h1").focus({ preventScroll: true });
  try {
    await view.show(argument);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.code === 401) return signOut();
    announce(describe(error));
  }
}

async function refreshCredits() {
  const catalogue = await loadCatalogue();
  if (catalogue.sandbox) return; // test keys are never charged
  try {
    showCredits(await api.credit());
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
  }
}

function showCredits(balance) {
  credits.textContent = `Credits: ${balance}`;
}

/** Signed out: the operator view alone at #/operator, else the sign-in form. */
let operatorAlone = null;
function showSignedOut() {
  if (location.hash !== "#/operator") {
    operatorAlone?.hide();
    return signInView();
  }
  operatorAlone ??= operatorView();
  replace(main, operatorAlone.element);
  document.title = "Operator · bananastand";
  operatorAlone.element.querySelector("h1").focus({ preventScroll: true });
  return operatorAlone.show();
}

function signOut() {
  forget();
  // A fresh page: nothing of the key's catalogue, tasks or streams stays in memory.
  history.replaceState(null, "", location.pathname);
  location.reload();
}

function signInView(problem = "") {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", spellcheck: false, required: true });
  const error = h("p", { class: "problem", attrs: { role: "alert" }, text: problem });
  const button = h("button", { type: "submit", text: "Sign in" });
  const form = h(
    "form",
    { class: "sign-in" },
    h("h1", { text: "Sign in", tabIndex: -1 }),
    h("p", { text: "Use an API key of this server (bs_live_… or bs_test_…). It stays in this tab only and is forgotten when the tab closes." }),
    h("div", { class: "field" }, h("label", { htmlFor: input.id, text: "API key" }), input),
    error,
    button,
    h("p", { class: "hint" }, "Running this server? ", h("a", { href: "#/operator", text: "Operator view" }), " (with the admin token)."),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "API key: paste a key to sign in.";
      input.focus();
      return;
    }
    remember(key);
    button.disabled = true;
    try {
      await start();
    } catch (failed) {
      forget();
      if (!(failed instanceof ApiError)) throw failed;
      error.textContent = describe(failed);
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}

/** Signed in: the key's catalogue first (a refused key fails here), then the views. */
async function start() {
  const catalogue = await loadCatalogue();
  operatorAlone?.hide();
  views = makeViews();
  replace(main);
  nav.hidden = false;
  account.hidden = false;
  badge.hidden = !catalogue.sandbox;
  refreshCredits();
  await showRoute();
}

document.querySelector(".sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", showRoute);

if (currentKey()) {
  start().catch((error) => {
    forget();
    if (!(error instanceof ApiError)) throw error;
    signInView(describe(error));
  });
} else {
  showSignedOut();
}
