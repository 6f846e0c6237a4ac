// The operator's view, signed in with the admin token (kept as the API key is): accounts
// (create, grant credits, set limits, make a key), the maintenance switch, model switches
// for everyone or one account, and the queue with the live workers. What it shows is
// read again every few seconds while it is open, without reloading the page.

import { admin, ApiError } from "./api.js";
import { h, field, fillSelect, replace, select, table, when, duration, announce } from "./dom.js";
import { currentAdminToken, forgetAdminToken, rememberAdminToken } from "./session.js";
import { describe } from "./words.js";

const REFRESH_MS = 5000;
const STATES = ["waiting", "queuing", "generating"];

export function operatorView() {
  const body = h("div");
  const element = h(
    "section",
    { class: "view operator", attrs: { "aria-labelledby": "operator-title" } },
    h("h1", { id: "operator-title", text: "Operator", tabIndex: -1 }),
    body,
  );
  let panels = null;
  let timer = null;

  function stop() {
    clearInterval(timer);
    timer = null;
  }

  async function open() {
    panels ??= operatorPanels({ onRefused: signInForm });
    replace(body, panels.element);
    await panels.refresh();
    stop();
    timer = setInterval(() => panels.refresh().catch(() => {}), REFRESH_MS);
  }

  function signInForm(problemText = "") {
    stop();
    panels = null;
    forgetAdminToken();
    const input = h("input", { type: "password", autocomplete: "off", spellcheck: false, required: true });
    const problem = h("p", { class: "problem", attrs: { role: "alert" }, text: problemText });
    const signIn = h(
      "form",
      { class: "sign-in" },
      h("p", { text: "Sign in with the server's admin token (BANANASTAND_ADMIN_TOKEN). It stays in this tab only." }),
      field("Admin token", input),
      problem,
      h("button", { type: "submit", text: "Sign in as operator" }),
    );
    signIn.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!input.value.trim()) {
        problem.textContent = "Admin token: paste the token to sign in.";
        input.focus();
        return;
      }
      rememberAdminToken(input.value.trim());
      try {
        await open();
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        signInForm(describe(error).replace("This API key", "The admin token"));
      }
    });
    replace(body, signIn);
    if (problemText) input.focus();
  }

  return {
    element,
    async show() {
      if (!currentAdminToken()) return signInForm();
      try {
        await open();
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        signInForm(describe(error).replace("This API key", "The admin token"));
      }
    },
    hide: stop,
  };
}

/** The signed-in panels; `refresh` reads everything they show again. */
function operatorPanels({ onRefused }) {
  const problem = h("p", { class: "problem", attrs: { role: "alert" } });
  const accounts = accountsPanel(act);
  const maintenance = maintenancePanel(act);
  const models = modelsPanel(act);
  const queue = queuePanel();
  const signOut = h("button", { type: "button", class: "secondary", text: "Sign out operator", on: { click: () => onRefused() } });
  const element = h("div", { class: "operator-panels" }, problem, accounts.element, maintenance.element, models.element, queue.element, signOut);

  /** Runs an action, then reads everything again; a refusal is said in words. */
  async function act(action, done) {
    problem.textContent = "";
    try {
      const result = await action();
      if (done) announce(done(result));
      await refresh();
      return result;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === 401) return onRefused(describe(error).replace("This API key", "The admin token"));
      problem.textContent = describe(error);
      return null;
    }
  }

  async function refresh() {
    const [found, switches, depth] = await Promise.all([admin.accounts(), admin.switches(), admin.queue()]);
    accounts.update(found);
    maintenance.update(switches);
    models.update(switches, found);
    queue.update(depth);
  }

  return { element, refresh };
}

function accountsPanel(act) {
  const list = h("div");
  const name = h("input", { type: "text", autocomplete: "off" });
  const create = form(
    () => act(() => admin.createAccount(name.value.trim()), (made) => `Account ${made.id} made.`),
    field("New account name", name),
    h("button", { type: "submit", class: "secondary", text: "Create account" }),
  );
  const chosen = select([]);
  const amount = h("input", { type: "number", step: 1, required: true });
  const note = h("input", { type: "text", autocomplete: "off" });
  const grant = form(
    grantCredits,
    h("h3", { text: "Grant credits" }),
    field("Amount (negative takes away)", amount),
    field("Note", note),
    h("button", { type: "submit", class: "secondary", text: "Grant" }),
  );
  const limits = {
    createRate: h("input", { type: "text", placeholder: "default", autocomplete: "off" }),
    readRate: h("input", { type: "text", placeholder: "default", autocomplete: "off" }),
    maxWaiting: h("input", { type: "number", min: 0, placeholder: "default" }),
    monthlyCap: h("input", { type: "number", min: 0, placeholder: "default" }),
  };
  const limitsForm = form(
    saveLimits,
    h("h3", { text: "Limits" }),
    h("p", { class: "hint", text: "Empty: the server's default. Rates like 10/minute." }),
    field("Create rate", limits.createRate),
    field("Read rate", limits.readRate),
    field("Max waiting tasks", limits.maxWaiting),
    field("Monthly cap (credits)", limits.monthlyCap),
    h("button", { type: "submit", class: "secondary", text: "Save limits" }),
  );
  const keyName = h("input", { type: "text", autocomplete: "off" });
  const keyTest = h("input", { type: "checkbox", id: "operator-key-test" });
  const madeKey = h("p", { class: "made-key", attrs: { "aria-live": "polite" } });
  const keyForm = form(
    makeKey,
    h("h3", { text: "Make a key" }),
    field("Key name", keyName),
    h("div", { class: "check" }, keyTest, h("label", { htmlFor: keyTest.id, text: "Test key (sandbox, free)" })),
    h("button", { type: "submit", class: "secondary", text: "Make key" }),
    madeKey,
  );
  const element = panel(
    "accounts-title",
    "Accounts",
    list,
    create,
    field("Account", chosen),
    h("div", { class: "account-actions" }, grant, limitsForm, keyForm),
  );
  let known = [];

  function account() {
    return known.find((each) => each.id === chosen.value);
  }

  async function grantCredits() {
    const id = chosen.value;
    const given = Number.parseInt(amount.value, 10);
    await act(() => admin.grant(id, given, note.value), (made) => `Account ${id} now has ${made.credits} credits.`);
  }

  async function saveLimits() {
    const id = chosen.value;
    const number = (input) => (input.value === "" ? null : Number.parseInt(input.value, 10));
    const text = (input) => input.value.trim() || null;
    const body = {
      createRate: text(limits.createRate),
      readRate: text(limits.readRate),
      maxWaiting: number(limits.maxWaiting),
      monthlyCap: number(limits.monthlyCap),
    };
    await act(() => admin.setLimits(id, body), () => `Limits of ${id} saved.`);
  }

  async function makeKey() {
    const id = chosen.value;
    const made = await act(() => admin.createKey(id, { name: keyName.value.trim(), test: keyTest.checked }), () => `A key for ${id} was made.`);
    if (made) madeKey.textContent = `New key (shown only now, copy it): ${made.secret}`;
  }

  function fillLimits() {
    const current = account();
    limits.createRate.value = current?.createRate ?? "";
    limits.readRate.value = current?.readRate ?? "";
    limits.maxWaiting.value = current?.maxWaiting ?? "";
    limits.monthlyCap.value = current?.monthlyCap ?? "";
  }

  chosen.addEventListener("change", () => {
    madeKey.textContent = "";
    fillLimits();
  });

  return {
    element,
    update(found) {
      const before = chosen.value;
      known = found;
      fillSelect(chosen, found.map(accountOption), before);
      if (chosen.value !== before) fillLimits();
      replace(
        list,
        table(
          "Every account",
          ["Account", "Name", "Credits", "Limits"],
          found.map((each) => [h("code", { text: each.id }), each.name || "—", String(each.credits), limitsText(each)]),
        ),
      );
    },
  };
}

/** One of the panels' forms: `onSubmit` runs in place of sending it. */
function form(onSubmit, ...children) {
  const element = h("form", { class: "inline-form" }, children);
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit();
  });
  return element;
}

/** A section of the view, named by its heading. */
function panel(id, title, ...children) {
  return h("section", { class: "panel", attrs: { "aria-labelledby": id } }, h("h2", { id, text: title }), children);
}

/** How an account is offered in a select: its name, with its id to tell twins apart. */
function accountOption(account) {
  return [account.id, account.name ? `${account.name} (${account.id})` : account.id];
}

function limitsText(account) {
  const set = [
    account.createRate && `create ${account.createRate}`,
    account.readRate && `read ${account.readRate}`,
    account.maxWaiting !== null && account.maxWaiting !== undefined && `${account.maxWaiting} waiting`,
    account.monthlyCap !== null && account.monthlyCap !== undefined && `cap ${account.monthlyCap}/month`,
  ].filter(Boolean);
  return set.length ? set.join(", ") : "defaults";
}

function maintenancePanel(act) {
  const on = h("input", { type: "checkbox", id: "maintenance-on" });
  const message = h("input", { type: "text", autocomplete: "off" });
  const state = h("p", { class: "hint", attrs: { "aria-live": "polite" } });
  let edited = false;
  message.addEventListener("input", () => (edited = true));
  on.addEventListener("change", () => (edited = true));
  const save = form(
    () => {
      edited = false;
      act(() => admin.maintenance(on.checked, message.value), (now) => (now.maintenance ? "Maintenance is on." : "Maintenance is off."));
    },
    h("div", { class: "check" }, on, h("label", { htmlFor: on.id, text: "Maintenance on" })),
    field("Message shown to clients", message),
    h("button", { type: "submit", class: "secondary", text: "Save maintenance" }),
  );
  const element = panel(
    "maintenance-title",
    "Maintenance",
    h("p", { class: "hint", text: "While on, new tasks are refused (code 455) with this message; everything else keeps working." }),
    state,
    save,
  );
  return {
    element,
    update(switches) {
      state.textContent = switches.maintenance ? `On: ${switches.maintenanceMessage || "(no message)"}` : "Off.";
      if (edited) return; // never overwrite what the operator is typing
      on.checked = switches.maintenance;
      message.value = switches.maintenanceMessage ?? "";
    },
  };
}

function modelsPanel(act) {
  const list = h("div");
  const model = h("input", { type: "text", autocomplete: "off", required: true, placeholder: "nano-banana-pro" });
  const who = select([["", "everyone"]]);
  const switchOff = form(
    () => {
      const name = model.value.trim();
      act(() => admin.switchModel(name, false, who.value), () => `${name} switched off.`);
    },
    field("Model", model),
    field("For", who),
    h("button", { type: "submit", class: "secondary", text: "Switch off" }),
  );
  const element = panel(
    "models-title",
    "Model switches",
    list,
    switchOff,
  );
  return {
    element,
    update(switches, accounts) {
      fillSelect(who, [["", "everyone"], ...accounts.map(accountOption)], who.value);
      replace(
        list,
        switches.disabledModels.length
          ? table(
              "Switched off",
              ["Model", "For", ""],
              switches.disabledModels.map((off) => [
                h("code", { text: off.model }),
                off.accountId ?? "everyone",
                h("button", {
                  type: "button",
                  class: "secondary",
                  text: "Switch on",
                  attrs: { "aria-label": `Switch ${off.model} on for ${off.accountId ?? "everyone"}` },
                  on: { click: () => act(() => admin.switchModel(off.model, true, off.accountId), () => `${off.model} switched on.`) },
                }),
              ]),
            )
          : h("p", { class: "hint", text: "Every model is on." }),
      );
    },
  };
}

function queuePanel() {
  const states = h("dl", { class: "facts" });
  const workers = h("div");
  const element = panel(
    "queue-title",
    "Queue",
    states,
    workers,
  );
  return {
    element,
    update(depth) {
      const oldest = depth.oldestWaitingAt === null ? "none waiting" : `${when(depth.oldestWaitingAt)} (${duration(depth.oldestWaitingAgeMs)} ago)`;
      replace(
        states,
        STATES.map((state) => [h("dt", { text: state }), h("dd", { class: `queue-${state}`, text: String(depth.byState[state] ?? 0) })]),
        h("dt", { text: "oldest waiting" }),
        h("dd", { class: "queue-oldest", text: oldest }),
      );
      replace(
        workers,
        depth.workers.length
          ? table(
              "Live workers",
              ["Host", "PID", "Role", "Tasks in flight", "Last heartbeat"],
              depth.workers.map((worker) => [worker.host, String(worker.pid), worker.role, `${worker.inFlight} of ${worker.concurrency}`, when(worker.heartbeatAt)]),
            )
          : h("p", { class: "hint", text: "No live workers: waiting tasks are not being taken." }),
      );
    },
  };
}
