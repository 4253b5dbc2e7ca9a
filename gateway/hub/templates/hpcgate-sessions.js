{% include "hpcgate-common.js" %}
// The sessions page: one card per session, kept live from /hub/api/hpcgate/sessions. Cards are
// updated in place (never re-created), so focus and an open job log survive each refresh.
(function () {
  "use strict";
  var H = window.hpcgate, root = document.getElementById("hpcgate-sessions");
  var user = root.dataset.user, cards = document.getElementById("hpcgate-cards");
  var status = document.getElementById("hpcgate-sessions-status");
  var skew = 0, last = {}, byName = {};
  var STATE_WORDS = {queued: "Queued", starting: "Starting", running: "Running",
                     stopping: "Stopping", ended: "Ended", stopped: "Not running"};

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function label(s) { return s.name ? "Session " + s.name : "Default session"; }
  function spawnUrl(name) {
    return H.base + "spawn/" + encodeURIComponent(user) + (name ? "/" + encodeURIComponent(name) : "");
  }
  function pendingUrl(name) {
    return H.base + "spawn-pending/" + encodeURIComponent(user) + (name ? "/" + encodeURIComponent(name) : "");
  }
  function act(promise, doneText) {
    return promise.then(function (r) {
      if (r.ok || r.status === 202 || r.status === 204) { H.say(status, doneText); refresh(); return r; }
      return r.json().catch(function () { return {}; }).then(function (doc) {
        H.say(status, doc.message || ("The hub refused (" + r.status + ")."));
        return null;
      });
    }).catch(function () { H.say(status, "The hub could not be reached. Try again in a moment."); });
  }
  function stop(name) {
    H.say(status, "Stopping " + (name || "the default session") + "…");
    return act(H.api(H.serverApi(user, name), {method: "DELETE"}), "Stop requested.");
  }
  function relaunch(name, options) {
    H.say(status, "Starting again with the same settings…");
    act(H.api(H.serverApi(user, name), {method: "POST", body: options || {}}), "Submitted.")
      .then(function (r) { if (r) { window.location.href = pendingUrl(name); } });
  }

  function makeCard(name) {
    var id = "hpcgate-card-" + (name || "default");
    var card = el("article", {"class": "card mb-3 hpcgate-card", id: id, "aria-labelledby": id + "-title"});
    var head = el("div", {"class": "card-header d-flex gap-2 align-items-center"});
    head.appendChild(el("h2", {"class": "h5 mb-0", id: id + "-title"}));
    head.appendChild(el("span", {"class": "badge text-bg-secondary hpcgate-state"}));
    card.appendChild(head);
    var body = el("div", {"class": "card-body"});
    body.appendChild(el("p", {"class": "hpcgate-state-text"}));
    body.appendChild(el("div", {"class": "alert alert-warning hpcgate-warning", role: "alert", hidden: ""}));
    var dl = el("dl", {"class": "row mb-2"});
    [["job", "Job"], ["where", "Partition / account"], ["node", "Node"], ["size", "Cores, memory, GPUs"],
     ["walltime", "Walltime requested"], ["started", "Started"], ["left", "Time left"],
     ["connection", "Connection"]].forEach(function (f) {
      dl.appendChild(el("dt", {"class": "col-sm-3"}, f[1]));
      dl.appendChild(el("dd", {"class": "col-sm-9 hpcgate-" + f[0]}));
    });
    body.appendChild(dl);
    var actions = el("div", {"class": "d-flex flex-wrap gap-2"});
    var open = el("a", {"class": "btn btn-primary hpcgate-open", role: "button"}, "Open");
    var stopBtn = el("button", {type: "button", "class": "btn btn-danger hpcgate-stop"}, "Stop");
    var again = el("button", {type: "button", "class": "btn btn-outline-primary hpcgate-relaunch"},
                   "Relaunch with the same settings");
    var edit = el("a", {"class": "btn btn-outline-secondary hpcgate-edit", role: "button", href: spawnUrl(name)},
                  "Edit and relaunch");
    var logBtn = el("button", {type: "button", "class": "btn btn-outline-secondary hpcgate-log-toggle",
                               "aria-expanded": "false", "aria-controls": id + "-log"}, "Job log");
    stopBtn.addEventListener("click", function () { stop(name); });
    again.addEventListener("click", function () { relaunch(name, (last[name] || {}).options); });
    logBtn.addEventListener("click", function () { toggleLog(card, logBtn, name); });
    [open, stopBtn, again, edit, logBtn].forEach(function (b) { actions.appendChild(b); });
    body.appendChild(actions);
    var log = el("pre", {"class": "hpcgate-log border rounded p-2 mt-2", id: id + "-log", hidden: "",
                         tabindex: "0", "aria-label": "Job output of " + (name || "the default session"),
                         style: "max-height: 20em; overflow: auto; white-space: pre-wrap"});
    body.appendChild(log);
    card.appendChild(body);
    cards.appendChild(card);
    return card;
  }

  function toggleLog(card, btn, name) {
    var log = card.querySelector(".hpcgate-log"), show = log.hidden;
    log.hidden = !show;
    btn.setAttribute("aria-expanded", show ? "true" : "false");
    if (show) { loadLog(card, name); }
  }
  function loadLog(card, name) {
    var log = card.querySelector(".hpcgate-log");
    if (log.hidden) { return; }
    H.api("hpcgate/sessions/" + encodeURIComponent(user) + "/log?server=" + encodeURIComponent(name))
      .then(function (r) { return r.json(); })
      .then(function (doc) {
        var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = doc.log || doc.note || doc.message || "(empty)";
        if (atEnd) { log.scrollTop = log.scrollHeight; }  // follow the tail unless scrolled up
      })
      .catch(function () { log.textContent = "The job's output could not be read just now."; });
  }

  function fill(card, s) {
    var q = function (c) { return card.querySelector(".hpcgate-" + c); };
    card.dataset.state = s.state;
    card.querySelector("h2").textContent = label(s);
    q("state").textContent = STATE_WORDS[s.state] || s.state;
    q("state").className = "badge hpcgate-state " + ({running: "text-bg-success", queued: "text-bg-info",
      starting: "text-bg-info", stopping: "text-bg-secondary", ended: "text-bg-dark"}[s.state] || "text-bg-secondary");
    q("state-text").textContent = s.state_text;
    var r = s.request || {};
    q("job").textContent = s.job_id || "–";
    q("where").textContent = (r.partition || "default partition") + (r.account ? " / " + r.account : "");
    q("node").textContent = s.node || (s.state === "queued" ? "not yet chosen" : "–");
    q("size").textContent = (r.cpus || "–") + (r.cpus === 1 ? " core, " : " cores, ") + H.memory(r.memory_mb) +
      ", " + (r.gpus || 0) + (r.gpus === 1 ? " GPU" : " GPUs");
    q("walltime").textContent = H.words(r.walltime_seconds);
    q("started").textContent = s.started ? H.clock(s.started) :
      (s.expected_start ? "expected " + H.clock(s.expected_start) : "not yet");
    card.dataset.ends = s.ends || "";
    q("connection").textContent = s.connection || "–";
    var warn = q("warning");
    warn.textContent = s.warning ? "Warning: " + s.warning : "";
    warn.hidden = !s.warning;
    var live = s.state !== "stopped" && s.state !== "ended";
    var open = q("open");
    if (s.url) { open.setAttribute("href", s.url); }
    open.hidden = !s.url;
    q("stop").hidden = !live || s.state === "stopping";
    q("relaunch").hidden = live || !s.options || !Object.keys(s.options).length;
    q("edit").hidden = live;
    card.querySelector("dl").hidden = !s.job_id;
    if (!live && !s.job_id) {
      q("state-text").textContent = (s.history && s.history.length) ? "Not running." :
        "No session yet: start one with the form.";
      q("edit").textContent = s.history && s.history.length ? "Edit and relaunch" : "Start a session";
    }
    tick(card);
    loadLog(card, s.name);
  }

  function tick(card) {
    var ends = parseFloat(card.dataset.ends), left = card.querySelector(".hpcgate-left");
    if (!ends) { left.textContent = "–"; return; }
    left.textContent = H.words(ends - (Date.now() / 1000 + skew)) + " (ends " + H.clock(ends) + ")";
  }

  function notifyStarts(s) {
    var before = last[s.name];
    if (before && (before.state === "queued") && s.state !== "queued" && s.state !== "ended" &&
        window.Notification && Notification.permission === "granted") {
      new Notification(label(s) + " has started", {body: "Job " + s.job_id + " is running on " + (s.node || "its node") + "."});
    }
  }

  function history(sessions) {
    var rows = [];
    sessions.forEach(function (s) { (s.history || []).forEach(function (h) { rows.push([s.name, h]); }); });
    rows.sort(function (a, b) { return b[1].ended - a[1].ended; });
    var tbody = document.querySelector("#hpcgate-history tbody");
    tbody.textContent = "";
    rows.slice(0, 10).forEach(function (row) {
      var name = row[0], h = row[1], tr = document.createElement("tr");
      [name || "default", h.job_id, (h.request || {}).partition || "–", H.clock(h.ended),
       H.words(h.ran_seconds), h.end_text].forEach(function (t) { tr.appendChild(el("td", {}, t)); });
      var td = el("td");
      var b = el("button", {type: "button", "class": "btn btn-sm btn-outline-primary"}, "Relaunch");
      b.setAttribute("aria-label", "Relaunch job " + h.job_id + " with the same settings");
      b.addEventListener("click", function () { relaunch(name, h.options); });
      td.appendChild(b);
      tr.appendChild(td);
      tbody.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      tr.appendChild(el("td", {colspan: "7"}, "No ended sessions yet."));
      tbody.appendChild(tr);
    }
  }

  function refresh() {
    return H.api("hpcgate/sessions").then(function (r) { return r.ok ? r.json() : null; }).then(function (doc) {
      if (!doc) { H.say(status, "The session list could not be loaded."); return; }
      skew = doc.now - Date.now() / 1000;
      if (window.hpcgateBanner) { window.hpcgateBanner(doc); }
      doc.sessions.forEach(function (s) {
        notifyStarts(s);
        var card = byName[s.name] || (byName[s.name] = makeCard(s.name));
        fill(card, s);
        last[s.name] = s;
      });
      var form = document.getElementById("hpcgate-new-session");
      var running = doc.sessions.filter(function (s) { return s.state !== "stopped" && s.state !== "ended"; }).length;
      form.hidden = doc.max_servers < 2;
      H.say(document.getElementById("hpcgate-new-limit"),
            "You may run " + doc.max_servers + " sessions at a time; " + running + " running.");
      history(doc.sessions);
    }).catch(function () { H.say(status, "The hub could not be reached; retrying."); });
  }

  document.getElementById("hpcgate-new-session").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = document.getElementById("hpcgate-new-name").value;
    window.location.href = spawnUrl(name);
  });
  var notify = document.getElementById("hpcgate-notify");
  if (!window.Notification || Notification.permission !== "default") { notify.hidden = true; }
  notify.addEventListener("click", function () {
    Notification.requestPermission().then(function () { notify.hidden = true; });
  });
  refresh();
  setInterval(refresh, 5000);
  setInterval(function () { Object.keys(byName).forEach(function (n) { tick(byName[n]); }); }, 1000);
})();
