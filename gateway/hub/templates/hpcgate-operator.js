// The operator view: every active session, filterable, with Stop.
(function () {
  "use strict";
  var H = window.hpcgate, status = document.getElementById("hpcgate-operator-status");
  var filter = document.getElementById("hpcgate-filter"), rows = [];
  function cell(tr, text) { var td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
  function render() {
    var tbody = document.querySelector("#hpcgate-operator tbody"), words = filter.value.toLowerCase();
    tbody.textContent = "";
    rows.filter(function (r) { return !words || r.text.indexOf(words) >= 0; }).forEach(function (r) {
      var s = r.s, tr = document.createElement("tr");
      tr.dataset.user = s.user;
      cell(tr, s.user); cell(tr, s.name || "default"); cell(tr, s.job_id || "–"); cell(tr, s.state);
      cell(tr, (s.request || {}).partition || "–"); cell(tr, s.node || "–");
      cell(tr, s.seconds_left === null ? "–" : H.words(s.seconds_left));
      cell(tr, s.state === "queued" ? s.state_text : "");
      var td = document.createElement("td"), b = document.createElement("button");
      b.type = "button"; b.className = "btn btn-sm btn-danger"; b.textContent = "Stop";
      b.setAttribute("aria-label", "Stop the session " + (s.name || "default") + " of " + s.user);
      b.addEventListener("click", function () {
        H.api(H.serverApi(s.user, s.name), {method: "DELETE"}).then(function (resp) {
          H.say(status, resp.ok || resp.status === 202 || resp.status === 204 ?
                "Stop requested for " + s.user + "." : "The hub refused (" + resp.status + ").");
          load();
        });
      });
      td.appendChild(b); tr.appendChild(td);
      tbody.appendChild(tr);
    });
  }
  function load() {
    H.api("hpcgate/sessions?all=1").then(function (r) { return r.ok ? r.json() : null; }).then(function (doc) {
      if (!doc) { H.say(status, "The session list could not be loaded."); return; }
      rows = [];
      doc.users.forEach(function (u) {
        u.sessions.filter(function (s) { return s.state !== "stopped"; }).forEach(function (s) {
          rows.push({s: s, text: [s.user, s.name, s.job_id, s.state, s.node, (s.request || {}).partition]
            .join(" ").toLowerCase()});
        });
      });
      render();
    });
  }
  filter.addEventListener("input", render);
  load();
  setInterval(load, 10000);
})();
