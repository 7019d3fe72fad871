// mover web UI: plain JavaScript over the REST API (docs/api.md). No build step, no
// dependencies, no inline script or style (the daemon's Content-Security-Policy forbids them),
// and nothing but this daemon is ever contacted. The token lives in sessionStorage only, so it
// is gone with the browser session.
"use strict";

(() => {
  const TOKEN_KEY = "mover.token";
  // How often the relationships and the details view are read again.
  const POLL_MS = 1500;
  // What the daemon accepts; shown, not enforced here: the API is the one that refuses.
  const API_MAX_WINDOWS = 10;
  // Bounds on what the form parses, far above what anyone types.
  const MAX_ID_PAIRS = 1024;
  const MAX_WINDOWS_IN_FORM = 32;
  const SRC = "/v1/replication/source-relationships";
  const TGT = "/v1/replication/target-relationships";
  const UNREADABLE = "/v1/replication/unreadable";
  const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
  const MINUTES_PER_DAY = 1440;
  // How many of the node's newest events the list page shows.
  const EVENTS_SHOWN = 10;
  // Events that say something went wrong, and those that say it was mended.
  const BAD_EVENTS = new Set(["job_failed", "peer_unreachable", "peer_incompatible"]);
  const GOOD_EVENTS = new Set(["job_recovered", "peer_reachable"]);

  const $ = (id) => document.getElementById(id);

  let me = null; // GET /v1/whoami
  let node = null; // GET /v1/node
  let page = "signin";
  let pollTimer = null;
  let pollGeneration = 0;
  let details = null; // {role, id} shown on the details page
  let newestEvent = null; // the id of the newest event shown
  let clusterSig = null; // what the cluster table shows, to draw it only when it changed
  let editing = null; // the view being edited, null when creating
  const rows = new Map(); // "role:id" -> <tr>

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const init = {
      method,
      cache: "no-store",
      headers: { Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "cannot reach the daemon: " + e.message);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = text;
      }
    }
    if (!res.ok) {
      let msg = res.statusText || "request failed";
      if (data && typeof data === "object" && typeof data.error === "string") msg = data.error;
      else if (typeof data === "string" && data) msg = data;
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  // The API's own words, with what kind of refusal it was.
  function describe(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    switch (err.status) {
      case 0:
        return err.message;
      case 401:
        return "Not signed in (401): " + err.message;
      case 403:
        return "Missing privilege (403): " + err.message;
      default:
        return err.message + " (" + err.status + ")";
    }
  }

  function can(p) {
    return !!me && me.privileges.includes(p);
  }

  // ---------------------------------------------------------------- DOM helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "onclick") e.addEventListener("click", v);
      else if (k === "oninput") e.addEventListener("input", v);
      else if (k === "checked" || k === "disabled" || k === "value") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }

  function setAttr(e, k, v) {
    if (v === null || v === undefined) {
      if (e.hasAttribute(k)) e.removeAttribute(k);
    } else if (e.getAttribute(k) !== String(v)) e.setAttribute(k, v);
  }

  function showError(msg) {
    const b = $("error");
    setText(b, msg || "");
    b.hidden = !msg;
  }

  function show(name) {
    page = name;
    for (const p of ["signin", "list", "form", "details", "cluster"]) $("page-" + p).hidden = p !== name;
    document.body.setAttribute("data-page", name);
  }

  // ---------------------------------------------------------------- formatting

  function plural(n, unit) {
    return n + " " + unit + (n === 1 ? "" : "s");
  }

  // "8 minutes", "2 hours 5 minutes": how old a recovery point is.
  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return plural(s, "second");
    const m = Math.floor(s / 60);
    if (m < 60) return plural(m, "minute");
    const h = Math.floor(m / 60);
    if (h < 48) return plural(h, "hour") + (m % 60 ? " " + plural(m % 60, "minute") : "");
    return plural(Math.floor(h / 24), "day");
  }

  function runTime(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const r = s % 60;
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + r + " s";
    return r + " s";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Number(n) || 0;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function count(n) {
    return (Number(n) || 0).toLocaleString("en-US");
  }

  function percent(p) {
    return (Number(p) || 0).toFixed(1) + "%";
  }

  // The exact time for a hover: the API's UTC time and the browser's local reading of it.
  function exactTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? iso : iso + " (" + d.toLocaleString() + ")";
  }

  function capital(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1) : s;
  }

  function targetOf(v) {
    return v.target_address + ":" + v.target_port;
  }

  // ---------------------------------------------------------------- sign-in

  async function start() {
    me = await api("GET", "/v1/whoami");
    node = await api("GET", "/v1/node");
    setText($("who-name"), me.name);
    setText($("who-role"), me.role);
    $("who").hidden = false;
    $("create-relationship").disabled = !can("SOURCE_WRITE");
    $("create-relationship").title = can("SOURCE_WRITE")
      ? ""
      : "your token lacks the SOURCE_WRITE privilege";
    const line = $("node-line");
    line.replaceChildren(
      "This node: mover " + node.version + " · peer port " + node.listen + " · certificate ",
      el("span", { id: "node-fingerprint", class: "mono", text: node.fingerprint })
    );
    // A node outside a cluster answers 404: no cluster page then.
    let inCluster = true;
    try {
      await api("GET", "/v1/cluster");
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      inCluster = false;
    }
    $("nav-cluster").hidden = !inCluster;
    $("nav-cluster-plain").hidden = inCluster;
    showList();
  }

  function signOut(msg) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    node = null;
    pollGeneration += 1;
    clearTimeout(pollTimer);
    rows.clear();
    newestEvent = null;
    $("relationships-body").replaceChildren();
    $("events-body").replaceChildren();
    $("events-panel").hidden = true;
    $("cluster-body").replaceChildren();
    clusterSig = null;
    $("nav-cluster").hidden = true;
    $("nav-cluster-plain").hidden = false;
    $("who").hidden = true;
    $("token").value = "";
    showError("");
    const e = $("signin-error");
    setText(e, msg || "");
    e.hidden = !msg;
    if ($("dialog").open) $("dialog").close();
    show("signin");
  }

  // A refusal of the token itself ends the session; anything else is shown.
  function handle(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Signed out: " + err.message);
      return;
    }
    showError(describe(err));
  }

  // ---------------------------------------------------------------- polling

  function schedule() {
    clearTimeout(pollTimer);
    const gen = pollGeneration;
    pollTimer = setTimeout(async () => {
      if (gen !== pollGeneration || !me) return;
      await refresh();
      if (gen === pollGeneration && me) schedule();
    }, POLL_MS);
  }

  async function refresh() {
    try {
      if (page === "list") await refreshList();
      else if (page === "details") await refreshDetails();
      else if (page === "cluster") await refreshCluster();
    } catch (e) {
      handle(e);
    }
  }

  // A page that is read again every POLL_MS: the list or the cluster's nodes.
  function showPolled(name) {
    details = null;
    editing = null;
    show(name);
    refresh().then(schedule);
  }

  function showList() {
    showPolled("list");
  }

  // ---------------------------------------------------------------- relationships table

  async function refreshList() {
    const reads = [];
    if (can("SOURCE_READ")) reads.push(api("GET", SRC));
    if (can("TARGET_READ")) reads.push(api("GET", TGT));
    if (!reads.length) {
      showError(
        "Missing privilege: the token's role (" + me.role + ") lacks SOURCE_READ and TARGET_READ"
      );
      return;
    }
    // The events' own failure (a 500, say) shows in their panel: the relationships still
    // update. A refused token signs out as anywhere else.
    const events = api("GET", "/v1/events?limit=" + EVENTS_SHOWN).catch((e) => {
      if (e instanceof ApiError && e.status === 401) throw e;
      return e;
    });
    // Stored relationships this release cannot read are left out of the lists; they are
    // shown apart, so the others stay in sight while one is repaired.
    const unreadable = api("GET", UNREADABLE).catch((e) => {
      if (e instanceof ApiError && e.status === 401) throw e;
      return [];
    });
    const [read, recent, damaged] = await Promise.all([Promise.all(reads), events, unreadable]);
    const views = read.flat();
    if (page !== "list") return;
    showError("");
    renderRows(views);
    renderUnreadable(damaged);
    if (recent instanceof Error) showEventsError(recent);
    else renderEvents(recent);
  }

  // One line per stored relationship this release cannot read: why, and a way to forget it.
  function renderUnreadable(list) {
    const banner = $("unreadable-banner");
    banner.hidden = list.length === 0;
    const key = JSON.stringify([me && me.role, list]);
    if (banner.dataset.shown === key) return;
    banner.dataset.shown = key;
    const lines = list.map((u) =>
      el(
        "div",
        { class: "unreadable", "data-id": u.id },
        el("span", { class: "mono", text: u.id }),
        " (" + (u.role || "role unreadable") + "): " + u.error + " ",
        forgetButton(u)
      )
    );
    banner.replaceChildren(
      el("p", {
        text:
          "This node's release cannot read " +
          (list.length === 1 ? "a stored relationship" : list.length + " stored relationships") +
          ": it runs no job and is not listed below. Upgrade again, or restore the state database; forget it only if neither is possible.",
      }),
      ...lines
    );
  }

  // Disabled, saying why, for a token that may not forget it (as the other actions are).
  function forgetButton(u) {
    const need = u.role === "source" ? "SOURCE_WRITE" : u.role === "target" ? "TARGET_WRITE" : "ADMIN";
    return el("button", {
      type: "button",
      class: "icon danger",
      text: "Forget",
      disabled: !can(need),
      title: can(need) ? null : "your token lacks the " + need + " privilege",
      onclick: () => confirmForget(u),
    });
  }

  function confirmForget(u) {
    dialog({
      title: "Forget Unreadable Relationship",
      body: [
        el("p", { text: "Forget relationship " + u.id + " on this node?" }),
        el("div", {
          class: "warning",
          text: "Nothing of it is released: a target directory stays read-only until its mounts are undone by hand, and the peer keeps its side. This cannot be undone.",
        }),
      ],
      confirm: "Yes, Forget",
      danger: true,
      run: () => api("DELETE", UNREADABLE + "/" + encodeURIComponent(u.id)),
    });
  }

  function showEventsError(e) {
    newestEvent = null;
    $("events-panel").hidden = false;
    $("events-body").replaceChildren(
      el("tr", {}, el("td", { colspan: "4", class: "attempt-bad", text: "Cannot read the events: " + describe(e) }))
    );
  }

  // The newest events first; drawn again only when a new one came.
  function renderEvents(events) {
    const newest = events.length ? events[events.length - 1].id : null;
    $("events-panel").hidden = newest === null;
    if (newest === newestEvent) return;
    newestEvent = newest;
    const trs = events
      .slice()
      .reverse()
      .map((e) => {
        const about = e.relationship
          ? el("span", { class: "mono", title: e.relationship, text: e.relationship.slice(0, 8) })
          : "—";
        return el(
          "tr",
          {
            "data-event": e.id,
            "data-kind": e.kind,
            class: BAD_EVENTS.has(e.kind) ? "bad" : GOOD_EVENTS.has(e.kind) ? "good" : null,
          },
          el("td", {
            class: "event-time",
            title: exactTime(e.time),
            text: new Date(e.time).toLocaleString(),
          }),
          el("td", { class: "event-kind", text: capital(e.kind.replace(/_/g, " ")) }),
          el("td", {}, about, e.role ? el("span", { class: "sub role", text: " " + e.role }) : null),
          el("td", { class: "event-message", text: e.message })
        );
      });
    $("events-body").replaceChildren(...trs);
  }

  function renderRows(views) {
    const body = $("relationships-body");
    const seen = new Set();
    const order = [];
    for (const v of views) {
      const key = v.role + ":" + v.id;
      seen.add(key);
      let tr = rows.get(key);
      if (!tr) {
        tr = newRow(v);
        rows.set(key, tr);
      }
      updateRow(tr, v);
      order.push(tr);
    }
    for (const [key, tr] of rows) {
      if (!seen.has(key)) {
        tr.remove();
        rows.delete(key);
      }
    }
    // Reordered only when the order changed, so a row under the pointer stays put.
    const current = Array.from(body.children);
    if (current.length !== order.length || current.some((tr, i) => tr !== order[i])) {
      body.replaceChildren(...order);
    }
    // As the seeds' target cluster does: a request for authorization is announced.
    const waiting = views.filter((v) => v.role === "target" && v.state === "awaiting_authorization").length;
    const banner = $("auth-banner");
    setText(
      banner,
      waiting === 1
        ? "A relationship awaits authorization on this node: compare its source's fingerprint, then Authorize."
        : waiting + " relationships await authorization on this node: compare their sources' fingerprints, then Authorize."
    );
    banner.hidden = waiting === 0;
    $("no-relationships").hidden = views.length > 0;
    $("relationships").hidden = views.length === 0;
  }

  function newRow(v) {
    const cells = {};
    for (const c of ["status", "recovery-point", "last-attempt", "role", "source", "target"]) {
      cells[c] = el("td", { "data-col": c });
    }
    const actions = el("td", { class: "actions", "data-col": "actions" });
    const tr = el(
      "tr",
      { "data-id": v.id, "data-role": v.role },
      ...Object.values(cells),
      actions
    );
    tr._cells = cells;
    const button = (action, text, cls, onclick) =>
      el("button", { type: "button", class: "icon " + (cls || ""), "data-action": action, text, onclick });
    const current = () => tr._view;
    const b = {
      details: button("details", "Details", "", () => openDetails(current())),
    };
    if (v.role === "source") {
      b.edit = button("edit", "✎ Edit", "", () => openForm(current()));
      b.delete = button("delete", "Delete", "", () => confirmDelete(current()));
    } else {
      b.authorize = button("authorize", "Authorize", "primary", () => confirmAuthorize(current()));
      b["make-writable"] = button("make-writable", "Make writable", "", () =>
        confirmMakeWritable(current())
      );
      b.delete = button("delete", "Delete", "", () => confirmDelete(current()));
    }
    tr._buttons = b;
    actions.append(...Object.values(b));
    return tr;
  }

  function updateRow(tr, v) {
    tr._view = v;
    const c = tr._cells;
    setAttr(tr, "data-state", v.state);

    // Status: icon, words, and a progress bar while a job runs.
    const status = el(
      "div",
      { class: "status" },
      el("span", { class: "icon-state " + v.state, title: v.state_text }),
      el("span", { class: "status-label", text: capital(v.state_text) })
    );
    const parts = [status];
    if (v.job) {
      const j = v.job;
      const text = j.scanning
        ? "scanning…"
        : percent(j.percent) + " · " + bytes(j.throughput_bytes_per_sec) + "/s" + (j.paused ? " · paused" : "");
      parts.push(
        el("progress", { max: "100", value: String(j.scanning ? 0 : j.percent), "data-percent": j.percent }),
        el("div", { class: "progress-text", text })
      );
    }
    const sig = JSON.stringify([v.state, v.job && [v.job.percent, v.job.scanning, v.job.paused, Math.round(v.job.throughput_bytes_per_sec)]]);
    if (c.status._sig !== sig) {
      c.status._sig = sig;
      c.status.replaceChildren(...parts);
    }

    // Recovery point: its age, the exact time on hover.
    if (v.recovery_point) {
      setText(c["recovery-point"], age(v.recovery_point.age_seconds));
      setAttr(c["recovery-point"], "title", exactTime(v.recovery_point.time));
      setAttr(c["recovery-point"], "data-time", v.recovery_point.time);
    } else {
      setText(c["recovery-point"], "—");
      setAttr(c["recovery-point"], "title", "no recovery point yet");
      setAttr(c["recovery-point"], "data-time", null);
    }

    const a = v.last_attempt;
    const asig = a ? a.time + a.ok + a.message : "";
    if (c["last-attempt"]._sig !== asig) {
      c["last-attempt"]._sig = asig;
      if (a) {
        c["last-attempt"].replaceChildren(
          el("span", { class: a.ok ? "attempt-ok" : "attempt-bad", text: a.ok ? "Completed" : "Failed" }),
          a.ok ? null : el("div", { class: "sub", text: a.message })
        );
        setAttr(c["last-attempt"], "title", exactTime(a.time) + ": " + a.message);
        setAttr(c["last-attempt"], "data-ok", String(a.ok));
      } else {
        c["last-attempt"].replaceChildren("—");
        setAttr(c["last-attempt"], "title", null);
        setAttr(c["last-attempt"], "data-ok", null);
      }
    }

    setText(c.role, capital(v.role));
    const src = v.source_path;
    if (c.source._sig !== src) {
      c.source._sig = src;
      c.source.replaceChildren(el("div", { class: "path", text: src }));
    }
    const tgt = v.target_path + " " + targetOf(v);
    if (c.target._sig !== tgt) {
      c.target._sig = tgt;
      c.target.replaceChildren(
        el("div", { class: "path", text: v.target_path }),
        el("div", { class: "sub", text: "on " + targetOf(v) })
      );
    }

    // What this token may do, and what the relationship's state allows.
    const b = tr._buttons;
    const write = v.role === "source" ? "SOURCE_WRITE" : "TARGET_WRITE";
    const allowed = can(write);
    const lacks = allowed ? "" : "your token lacks the " + write + " privilege";
    for (const [name, btn] of Object.entries(b)) {
      if (name === "details") continue;
      btn.disabled = !allowed;
      setAttr(btn, "title", lacks || null);
    }
    if (b.authorize) b.authorize.hidden = v.authorized || v.state === "ended";
    if (b["make-writable"]) b["make-writable"].hidden = !v.authorized || v.state === "ended";
  }

  // ---------------------------------------------------------------- dialogs

  // One modal for every confirmation: `run` does the work; its refusal stays in the dialog.
  function dialog({ title, body, confirm, danger, run }) {
    const d = $("dialog");
    setText($("dialog-title"), title);
    $("dialog-body").replaceChildren(...body);
    showDialogError("");
    const ok = $("dialog-confirm");
    setText(ok, confirm);
    ok.className = danger ? "danger" : "primary";
    ok.disabled = false;
    ok.onclick = async () => {
      ok.disabled = true;
      try {
        await run();
        d.close();
        await refresh();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return handle(e);
        showDialogError(describe(e));
        ok.disabled = false;
      }
    };
    if (!d.open) d.showModal();
  }

  function showDialogError(msg) {
    const e = $("dialog-error");
    setText(e, msg);
    e.hidden = !msg;
  }

  function pathPair(v) {
    return el(
      "p",
      {},
      el("span", { class: "path", text: v.source_path }),
      " → ",
      el("span", { class: "path", text: v.target_path }),
      " on " + targetOf(v)
    );
  }

  function confirmAuthorize(v) {
    const opts = [
      ["allow_non_empty_target", "The target directory may hold files (they are replaced)"],
      ["allow_setuid", "Honour setuid/setgid bits on the replica"],
      ["allow_devices", "Let replicated device nodes be opened on the replica"],
      ["allow_exec", "Let replicated files be executed on the replica"],
    ];
    const boxes = opts.map(([k, text]) =>
      el("label", { class: "row" }, el("input", { type: "checkbox", id: "a-" + k, "data-option": k }), text)
    );
    dialog({
      title: "Authorize Relationship",
      body: [
        el("p", { text: "A source asks to replicate into this node:" }),
        pathPair(v),
        el("p", {
          text: "Compare the source's certificate fingerprint with the one the source node shows (its UI's header, or `mover node` there) before you accept:",
        }),
        el("code", {
          class: "fingerprint",
          id: "authorize-fingerprint",
          text: v.peer_fingerprint || "(none pinned)",
        }),
        el("div", { class: "warning", text: "Once authorized, the target directory is read-only for clients until the relationship is deleted or the target made writable." }),
        ...boxes,
      ],
      confirm: "Authorize Relationship",
      run: () => {
        const body = {};
        for (const b of boxes) {
          const input = b.querySelector("input");
          if (input.checked) body[input.dataset.option] = true;
        }
        return api("POST", TGT + "/" + v.id + "/authorize", body);
      },
    });
  }

  function confirmMakeWritable(v) {
    const rp = v.recovery_point ? v.recovery_point.time : "none yet";
    dialog({
      title: "Make Target Writable",
      body: [
        pathPair(v),
        el("div", {
          class: "warning",
          text: "Failover: the target directory is reverted to the last recovery point (" + rp + ") and becomes writable. The relationship ends: the source starts no more jobs. Reconnect it from the source, or delete it, afterwards.",
        }),
      ],
      confirm: "Yes, Make Writable",
      danger: true,
      run: () => api("POST", TGT + "/" + v.id + "/make-writable"),
    });
  }

  function confirmDelete(v) {
    const base = v.role === "source" ? SRC : TGT;
    dialog({
      title: "Delete Relationship",
      body: [
        el("p", { text: "Delete this " + v.role + " relationship?" }),
        pathPair(v),
        el("div", {
          class: "warning",
          id: "delete-warning",
          text: "The target directory becomes writable: it keeps the data of the last recovery point, is no longer protected and receives no more changes. Replication stops.",
        }),
      ],
      confirm: "Yes, Delete",
      danger: true,
      run: async () => {
        await api("DELETE", base + "/" + v.id);
        if (details) showList();
      },
    });
  }

  $("dialog-cancel").addEventListener("click", () => $("dialog").close());

  // ---------------------------------------------------------------- details

  function openDetails(v) {
    details = { role: v.role, id: v.id };
    show("details");
    renderDetails(v);
    refresh().then(schedule);
  }

  async function refreshDetails() {
    const d = details;
    if (!d) return;
    try {
      const v = await api("GET", (d.role === "source" ? SRC : TGT) + "/" + d.id);
      if (page === "details" && details === d) {
        showError("");
        renderDetails(v);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        showList();
        showError("The relationship no longer exists on this node.");
        return;
      }
      throw e;
    }
  }

  function metric(id, label, value, bar) {
    return el(
      "div",
      { class: "metric" },
      el("div", { class: "k", text: label }),
      el("div", { class: "v", id, text: value }),
      bar === undefined ? null : el("progress", { max: "100", value: String(bar) })
    );
  }

  function renderDetails(v) {
    const j = v.job;
    const dash = "—";
    const head = el(
      "div",
      { class: "status", id: "d-state", "data-state": v.state },
      el("span", { class: "icon-state " + v.state }),
      el("span", { class: "status-label", text: capital(v.state_text) }),
      el("span", { class: "sub", text: " · " + capital(v.role) + " · " + v.id })
    );
    const grid = el(
      "div",
      { class: "details-grid" },
      metric("d-percent", "Progress", j ? percent(j.percent) : dash, j ? j.percent : undefined),
      metric("d-percent-files", "By files", j ? percent(j.percent_files) : dash, j ? j.percent_files : undefined),
      metric("d-percent-bytes", "By bytes", j ? percent(j.percent_bytes) : dash, j ? j.percent_bytes : undefined),
      metric("d-throughput", "Throughput", j ? bytes(j.throughput_bytes_per_sec) + "/s" : dash),
      metric("d-run-time", "Run time", j ? runTime(j.run_seconds) : dash)
    );
    // One row of the counts table: done, remaining and total of files or bytes.
    const countRow = (label, what, show) =>
      el(
        "tr",
        {},
        el("th", { text: label }),
        ...["done", "remaining", "total"].map((k) =>
          el("td", { id: "d-" + what + "-" + k, text: j ? show(j[what + "_" + k]) : dash })
        )
      );
    const counts = el(
      "table",
      { class: "counts" },
      el("thead", {}, el("tr", {}, el("th", { text: "" }), el("th", { text: "Done" }), el("th", { text: "Remaining" }), el("th", { text: "Total" }))),
      el("tbody", {}, countRow("Files", "files", count), countRow("Data", "bytes", bytes))
    );
    const jobNote = j
      ? el("p", { class: "hint", text: j.scanning ? "Scanning the source: totals are not known yet." : j.paused ? "Paused (blackout window or disabled)." : "A job is running." })
      : el("p", { class: "hint", id: "d-no-job", text: "No job is running; the next job's progress shows here." });

    const facts = [];
    const fact = (k, val, id) => {
      if (val === null || val === undefined || val === "") return;
      facts.push(el("dt", { text: k }), el("dd", { text: String(val), id }));
    };
    fact("Source directory", v.source_path, "d-source");
    fact("Target", v.target_path + " on " + targetOf(v), "d-target");
    fact("Recovery point", v.recovery_point ? v.recovery_point.time + " (" + age(v.recovery_point.age_seconds) + " ago)" : dash, "d-recovery-point");
    fact("Last attempt", v.last_attempt ? v.last_attempt.time + ": " + v.last_attempt.message : dash, "d-last-attempt");
    fact("Replication enabled", v.enabled ? "yes" : "no");
    fact("Mode", v.mode.replace(/_/g, " "));
    if (v.policies && v.policies.length) fact("Snapshot policies", v.policies.join(", "));
    if (v.mode !== "continuous") fact("Target expiry", v.target_expiry);
    fact("Policy snapshots", v.snapshots ? v.snapshots.queued + " queued, " + v.snapshots.kept + " kept" : null);
    fact("Point in time", v.snapshot);
    fact("Bandwidth limit", v.bandwidth_limit ? bytes(v.bandwidth_limit) + "/s" : "unlimited", "d-bandwidth");
    fact(
      "Blackout windows",
      v.blackout_windows.length
        ? v.blackout_windows.map((w) => w.days.join(",") + " " + w.start + "–" + w.end + " " + w.timezone).join("; ")
        : "none",
      "d-windows"
    );
    fact("ID mapping", v.map_ids ? "uid " + pairs(v.map_ids.uid) + "; gid " + pairs(v.map_ids.gid) : "off");
    fact("Authorized", v.authorized ? "yes" : "no");
    fact("Peer certificate", v.peer_fingerprint, "d-peer-fingerprint");
    fact("Read-only enforcement", v.read_only);
    fact("Data plane", v.data_plane);
    fact("Change detection", v.change_detection);
    fact("Epoch", v.epoch);
    if (v.scrub) fact("Last scrub", v.scrub.last_at + (v.scrub.ok ? ": equal to the recovery point" : ": differs: " + v.scrub.difference));
    fact("Path error", v.path_error);
    fact("Watch error", v.watch_error);
    fact("Peer version", v.peer_version_error);

    $("details-body").replaceChildren(
      head,
      pathPair(v),
      grid,
      counts,
      jobNote,
      el("h2", { text: "Relationship" }),
      el("dl", { class: "facts" }, ...facts)
    );
  }

  function pairs(list) {
    return list && list.length ? list.map((p) => p[0] + "→" + p[1]).join(", ") : "none";
  }

  $("details-back").addEventListener("click", () => showList());

  // ---------------------------------------------------------------- create / edit form

  function browserZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    } catch (_) {
      return "UTC";
    }
  }

  function fillZones() {
    const list = $("timezones");
    if (list.children.length) return;
    let zones = ["UTC"];
    try {
      if (Intl.supportedValuesOf) zones = zones.concat(Intl.supportedValuesOf("timeZone"));
    } catch (_) {
      // An old browser: the field still takes any IANA name typed in.
    }
    list.replaceChildren(...zones.map((z) => el("option", { value: z })));
  }

  function minutes(t) {
    const m = /^\s*(\d{1,2}):(\d{2})\s*$/.exec(t || "");
    if (!m) return null;
    const h = Number(m[1]);
    const mm = Number(m[2]);
    return h < 24 && mm < 60 ? h * 60 + mm : null;
  }

  // How long a window lasts by the wall clock, as the daemon counts it.
  function windowLength(start, end) {
    const s = minutes(start);
    const e = minutes(end);
    if (s === null || e === null) return "enter HH:MM times";
    const len = e > s ? e - s : MINUTES_PER_DAY - s + e;
    const h = Math.floor(len / 60);
    const m = len % 60;
    let text = (h ? h + " h" : "") + (h && m ? " " : "") + (m ? m + " min" : "");
    if (len === MINUTES_PER_DAY) text += " (whole day)";
    else if (e <= s) text += " (past midnight)";
    return text;
  }

  function addWindow(w) {
    const box = $("windows");
    if (box.children.length >= MAX_WINDOWS_IN_FORM) return;
    const days = new Set(w ? w.days : ["sat", "sun"]);
    const win = el("div", { class: "window" });
    const index = el("span", { class: "w-index" });
    const dayBoxes = el(
      "div",
      { class: "days" },
      ...DAYS.map((d) =>
        el("label", {}, capital(d), el("input", { type: "checkbox", class: "w-day", "data-day": d, checked: days.has(d) }))
      )
    );
    const start = el("input", { type: "text", class: "time w-start", placeholder: "HH:MM", inputmode: "numeric", value: w ? w.start : "00:00", "aria-label": "start" });
    const end = el("input", { type: "text", class: "time w-end", placeholder: "HH:MM", inputmode: "numeric", value: w ? w.end : "06:00", "aria-label": "end" });
    const tz = el("input", { type: "text", class: "tz w-tz", list: "timezones", value: w ? w.timezone : browserZone(), "aria-label": "time zone", spellcheck: "false" });
    const duration = el("span", { class: "w-duration" });
    const update = () => setText(duration, windowLength(start.value, end.value));
    for (const i of [start, end]) i.addEventListener("input", update);
    const remove = el("button", {
      type: "button",
      class: "icon w-remove",
      text: "Remove",
      onclick: () => {
        win.remove();
        numberWindows();
      },
    });
    win.append(index, dayBoxes, start, el("span", { text: "to" }), end, tz, duration, remove);
    box.append(win);
    update();
    numberWindows();
  }

  function numberWindows() {
    const all = Array.from($("windows").children);
    all.forEach((w, i) => {
      w.setAttribute("data-index", String(i));
      setText(w.querySelector(".w-index"), String(i + 1));
    });
    const n = all.length;
    const c = $("window-count");
    setText(c, n + " of " + API_MAX_WINDOWS + (n > API_MAX_WINDOWS ? " — the daemon accepts at most " + API_MAX_WINDOWS : ""));
    $("add-window").disabled = n >= MAX_WINDOWS_IN_FORM;
  }

  function readWindows() {
    return Array.from($("windows").children).map((w) => ({
      days: Array.from(w.querySelectorAll(".w-day")).filter((b) => b.checked).map((b) => b.dataset.day),
      start: w.querySelector(".w-start").value.trim(),
      end: w.querySelector(".w-end").value.trim(),
      timezone: w.querySelector(".w-tz").value.trim(),
    }));
  }

  function parsePairs(text, what) {
    const out = [];
    for (const item of text.split(/[\s,;]+/).filter(Boolean)) {
      const m = /^(\d+):(\d+)$/.exec(item);
      if (!m) throw new Error(what + " mapping " + JSON.stringify(item) + " is not source:target (two numbers)");
      out.push([Number(m[1]), Number(m[2])]);
      if (out.length > MAX_ID_PAIRS) throw new Error("at most " + MAX_ID_PAIRS + " " + what + " mappings");
    }
    return out;
  }

  function toggleFormRows() {
    const mode = $("f-mode").value;
    $("policies-row").hidden = mode === "continuous";
    $("expiry-row").hidden = mode === "continuous";
    const after = $("f-expiry").value === "after";
    $("f-expiry-n").hidden = !after;
    $("f-expiry-unit").hidden = !after;
    $("map-rows").hidden = !$("f-map-ids").checked;
  }

  async function loadPolicies(linked) {
    const box = $("f-policies");
    box.replaceChildren();
    if (!can("SOURCE_READ")) return;
    try {
      const all = await api("GET", "/v1/snapshot-policies");
      if (!all.length) {
        box.append(el("span", { class: "hint", text: "No snapshot policies on this node (`mover policy create`)." }));
      }
      for (const p of all) {
        box.append(
          el("label", {}, el("input", { type: "checkbox", class: "f-policy", value: p.name, checked: linked.includes(p.name) }), " " + p.name)
        );
      }
    } catch (e) {
      box.append(el("span", { class: "hint", text: describe(e) }));
    }
  }

  // The largest unit that gives a whole number, for showing a limit back.
  function bandwidthParts(limit) {
    for (const unit of [1073741824, 1048576, 1024]) {
      if (limit % unit === 0) return [limit / unit, unit];
    }
    return [limit, 1];
  }

  function openForm(v) {
    editing = v || null;
    const edit = !!v;
    setText($("form-title"), edit ? "Edit Relationship" : "Create Relationship");
    setText($("save-relationship"), edit ? "Save Relationship" : "Create Relationship");
    $("form-error").hidden = true;
    $("f-source-path").value = edit ? v.source_path : "";
    $("f-target-path").value = edit ? v.target_path : "";
    $("f-source-path").disabled = edit;
    $("f-target-path").disabled = edit;
    $("paths-hint").hidden = !edit;
    $("fingerprint-row").hidden = edit;
    $("f-target-fingerprint").value = "";
    $("f-target-address").value = edit ? v.target_address : "";
    $("f-target-port").value = edit ? String(v.target_port) : "3712";
    $("f-enabled").checked = edit ? v.enabled : true;
    $("f-mode").value = edit ? v.mode : "continuous";
    $("f-snapshot").value = edit ? v.snapshot : "auto";
    const [n, unit] = edit && v.bandwidth_limit ? bandwidthParts(v.bandwidth_limit) : [null, 1048576];
    $("f-bandwidth").value = n === null ? "" : String(n);
    $("f-bandwidth-unit").value = String(unit);
    $("f-map-ids").checked = edit && !!v.map_ids;
    $("f-uid-map").value = edit && v.map_ids ? v.map_ids.uid.map((p) => p.join(":")).join(", ") : "";
    $("f-gid-map").value = edit && v.map_ids ? v.map_ids.gid.map((p) => p.join(":")).join(", ") : "";
    setExpiry(edit ? v.target_expiry : "same-as-policy");
    $("windows").replaceChildren();
    if (edit) for (const w of v.blackout_windows) addWindow(w);
    numberWindows();
    fillZones();
    toggleFormRows();
    loadPolicies(edit ? v.policies : []);
    showError("");
    show("form");
    $(edit ? "f-target-address" : "f-source-path").focus();
  }

  // The view writes the expiry as `mover` prints it: same-as-policy, never, or 7d, 12h, 2w.
  function setExpiry(text) {
    const m = /^(\d+)([hdw])$/.exec(text || "");
    if (m) {
      $("f-expiry").value = "after";
      $("f-expiry-n").value = m[1];
      $("f-expiry-unit").value = { h: "3600", d: "86400", w: "604800" }[m[2]];
    } else {
      $("f-expiry").value = text === "never" ? "never" : "same_as_policy";
    }
  }

  function readExpiry() {
    const kind = $("f-expiry").value;
    if (kind !== "after") return kind;
    const n = Number($("f-expiry-n").value);
    if (!Number.isInteger(n) || n < 1) throw new Error("the target expiry must be a whole number of hours, days or weeks");
    return { after_secs: n * Number($("f-expiry-unit").value) };
  }

  function readForm() {
    const port = Number($("f-target-port").value);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error("the port must be 1 to 65535");
    let bandwidth = null;
    const bw = $("f-bandwidth").value.trim();
    if (bw) {
      const n = Number(bw);
      if (!isFinite(n) || n < 0) throw new Error("the bandwidth limit must be a positive number (empty: unlimited)");
      bandwidth = Math.round(n * Number($("f-bandwidth-unit").value));
    }
    const mapIds = $("f-map-ids").checked
      ? { uid: parsePairs($("f-uid-map").value, "uid"), gid: parsePairs($("f-gid-map").value, "gid") }
      : null;
    const mode = $("f-mode").value;
    const policies = mode === "continuous" ? [] : Array.from(document.querySelectorAll(".f-policy")).filter((b) => b.checked).map((b) => b.value);
    return {
      target_address: $("f-target-address").value.trim(),
      target_port: port,
      blackout_windows: readWindows(),
      map_ids: mapIds,
      enabled: $("f-enabled").checked,
      bandwidth_limit: bandwidth,
      snapshot: $("f-snapshot").value,
      mode,
      policies,
      target_expiry: mode === "continuous" ? "same_as_policy" : readExpiry(),
    };
  }

  async function saveForm(ev) {
    ev.preventDefault();
    const err = $("form-error");
    err.hidden = true;
    let body;
    try {
      body = readForm();
    } catch (e) {
      setText(err, e.message);
      err.hidden = false;
      return;
    }
    const save = $("save-relationship");
    save.disabled = true;
    try {
      if (editing) {
        await api("PATCH", SRC + "/" + editing.id, body);
      } else {
        // A create body leaves out what is not set; unknown or null-only fields are not sent.
        const create = {
          source_path: $("f-source-path").value.trim(),
          target_path: $("f-target-path").value.trim(),
          target_address: body.target_address,
          target_port: body.target_port,
          blackout_windows: body.blackout_windows,
          enabled: body.enabled,
        };
        if (body.map_ids) create.map_ids = body.map_ids;
        if (body.bandwidth_limit !== null) create.bandwidth_limit = body.bandwidth_limit;
        if (body.snapshot !== "auto") create.snapshot = body.snapshot;
        if (body.mode !== "continuous") {
          create.mode = body.mode;
          create.policies = body.policies;
          create.target_expiry = body.target_expiry;
        }
        const fp = $("f-target-fingerprint").value.trim();
        if (fp) create.target_fingerprint = fp;
        await api("POST", SRC, create);
      }
      showList();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return handle(e);
      setText(err, describe(e));
      err.hidden = false;
    } finally {
      save.disabled = false;
    }
  }

  $("relationship-form").addEventListener("submit", saveForm);
  $("cancel-form").addEventListener("click", () => showList());
  $("add-window").addEventListener("click", () => addWindow(null));
  for (const id of ["f-mode", "f-expiry", "f-map-ids"]) $(id).addEventListener("change", toggleFormRows);
  $("create-relationship").addEventListener("click", () => openForm(null));
  $("nav-replication").addEventListener("click", (ev) => {
    ev.preventDefault();
    if (me) showList();
  });

  // ---------------------------------------------------------------- cluster

  async function refreshCluster() {
    const v = await api("GET", "/v1/cluster");
    if (page !== "cluster") return;
    showError("");
    setText(
      $("cluster-line"),
      "This node: " + v.this_node +
        " · etcd " + (v.connected ? "connected" : "not reached" + (v.last_error ? " (" + v.last_error + ")" : "")) +
        " · leader " + (v.leader || "none") +
        " · a node that stops heartbeating shows down within " + v.down_bound_secs + " s"
    );
    // Drawn again only when something but the throughput changed, so a button under the
    // pointer stays put while jobs run; the throughput is written in place.
    const sig = JSON.stringify([v.this_node, v.leader, me.privileges, v.members], (k, x) =>
      k === "throughput_bytes_per_sec" ? undefined : x
    );
    if (sig !== clusterSig) {
      clusterSig = sig;
      $("cluster-body").replaceChildren(...v.members.map((m) => clusterRow(v, m)));
    }
    for (const m of v.members) {
      const cell = document.querySelector('#cluster-body tr[data-node="' + CSS.escape(m.name) + '"] .node-throughput');
      if (cell) setText(cell, throughput(m.report));
    }
  }

  // A node's running jobs' summed throughput, or nothing while it runs none.
  function throughput(r) {
    return r && r.jobs_running ? bytes(Math.round(r.throughput_bytes_per_sec)) + "/s" : "";
  }

  // One member: its state, jobs, containers and a drain or undrain button for admins.
  function clusterRow(v, m) {
    const drained = !!(m.drain && m.drain.drained);
    const state = !m.up ? "down" : drained ? "drained" : "up";
    const name = el(
      "td",
      {},
      el("span", { class: "mono", text: m.name }),
      m.name === v.this_node ? el("span", { class: "badge", text: "this node" }) : null,
      m.leader ? el("span", { class: "badge", text: "leader" }) : null,
      el("div", { class: "sub", text: "mover " + m.version + " · roles " + m.roles.join(", ") })
    );
    const status = el(
      "td",
      {},
      el("span", { class: "node-state " + state, text: capital(state) }),
      m.drain
        ? el("div", {
            class: "sub",
            text: (drained ? "drained" : "undrained") + " by " + m.drain.by,
            title: exactTime(m.drain.at),
          })
        : null
    );
    const r = m.report;
    const jobs = el(
      "td",
      {},
      r ? String(r.jobs_running) : "—",
      el("div", { class: "sub node-throughput", text: throughput(r) })
    );
    const containers = el(
      "td",
      {},
      ...(r ? r.containers : []).map((c) =>
        el("div", {
          class: "sub",
          "data-container": c.roles,
          text: c.roles + ": " + c.state + (c.healthy ? "" : ", not healthy") + (c.restarts ? ", " + plural(c.restarts, "restart") : ""),
        })
      )
    );
    const addrs = el(
      "td",
      {},
      el("div", { class: "sub mono", text: "API " + m.api }),
      el("div", { class: "sub mono", text: "peers " + m.listen })
    );
    const admin = can("ADMIN");
    const action = drained ? "undrain" : "drain";
    const btn = el("button", {
      type: "button",
      class: "icon",
      "data-action": action,
      text: drained ? "Undrain" : "Drain",
      disabled: !admin,
      title: admin ? null : "your token lacks the ADMIN privilege",
      onclick: () => confirmDrain(m.name, action),
    });
    return el(
      "tr",
      { "data-node": m.name, "data-state": state },
      name,
      status,
      jobs,
      containers,
      addrs,
      el("td", { class: "actions" }, btn)
    );
  }

  function confirmDrain(name, action) {
    const drain = action === "drain";
    dialog({
      title: drain ? "Drain Node" : "Undrain Node",
      body: [
        el("p", { text: (drain ? "Drain " : "Put back in service ") + name + "?" }),
        el("div", {
          class: drain ? "warning" : "hint",
          text: drain
            ? "A drained node starts no job of its relationships and takes no new shares or takeovers; the jobs it runs now finish. It still receives as a target. The drain holds across restarts until undrained."
            : "The node starts its relationships' jobs again and takes shares and takeovers.",
        }),
      ],
      confirm: drain ? "Drain " + name : "Undrain " + name,
      danger: drain,
      run: () => api("POST", "/v1/cluster/nodes/" + encodeURIComponent(name) + "/" + action),
    });
  }

  $("nav-cluster").addEventListener("click", (ev) => {
    ev.preventDefault();
    if (me) showPolled("cluster");
  });
  $("cluster-back").addEventListener("click", () => showList());

  // ---------------------------------------------------------------- start

  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("sign-in").disabled = true;
    try {
      await start();
    } catch (e) {
      signOut(describe(e));
    } finally {
      $("sign-in").disabled = false;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));

  if (sessionStorage.getItem(TOKEN_KEY)) {
    start().catch((e) => signOut(describe(e)));
  } else {
    show("signin");
  }
})();
