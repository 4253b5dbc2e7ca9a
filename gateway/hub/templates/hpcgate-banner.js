// The walltime banner on every hub page: the user's sessions close to their time limit.
(function () {
  "use strict";
  var banner = document.getElementById("hpcgate-walltime-banner");
  if (!banner || !window.jhdata) { return; }
  var url = window.jhdata.base_url + "api/hpcgate/sessions";
  function show(doc) {
    var lines = (doc.sessions || []).filter(function (s) { return s.warning; })
      .map(function (s) { return "Session " + (s.name || "default") + " (job " + s.job_id + "): " + s.warning; });
    banner.textContent = lines.length ? "Warning: " + lines.join(" ") : "";
    banner.hidden = !lines.length;
  }
  window.hpcgateBanner = show;  // the sessions page passes each fresh answer on at once
  function check() {
    fetch(url, {headers: {"X-XSRFToken": window.jhdata.xsrf_token}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) { if (doc) { show(doc); } })
      .catch(function () {});
  }
  check();
  setInterval(check, 30000);
})();
