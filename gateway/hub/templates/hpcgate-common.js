// Shared by the sessions page and the operator view: API calls, durations and times in words.
window.hpcgate = (function () {
  "use strict";
  var base = window.jhdata.base_url;
  function api(path, opts) {
    opts = opts || {};
    var headers = {"X-XSRFToken": window.jhdata.xsrf_token};
    if (opts.body !== undefined) { headers["Content-Type"] = "application/json"; }
    return fetch(base + "api/" + path, {method: opts.method || "GET", headers: headers,
      credentials: "same-origin", body: opts.body === undefined ? undefined : JSON.stringify(opts.body)});
  }
  function words(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    seconds = Math.max(0, Math.round(seconds));
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
        m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    function n(v, unit) { return v + " " + unit + (v === 1 ? "" : "s"); }
    if (d) { return n(d, "day") + (h ? " " + n(h, "hour") : ""); }
    if (h) { return n(h, "hour") + (m ? " " + n(m, "minute") : ""); }
    if (m) { return n(m, "minute") + (m < 10 && s ? " " + n(s, "second") : ""); }
    return n(s, "second");
  }
  function clock(epoch) {
    if (!epoch) { return "–"; }
    var t = new Date(epoch * 1000);
    return t.toLocaleString([], {dateStyle: "medium", timeStyle: "short"});
  }
  function memory(mb) {
    if (!mb) { return "–"; }
    return mb >= 1024 ? (Math.round(mb / 102.4) / 10) + " GB" : mb + " MB";
  }
  function serverApi(user, name) {
    return "users/" + encodeURIComponent(user) + (name ? "/servers/" + encodeURIComponent(name) : "/server");
  }
  function say(el, text) { el.textContent = text; }
  return {api: api, words: words, clock: clock, memory: memory, serverApi: serverApi, say: say,
          base: base};
})();
