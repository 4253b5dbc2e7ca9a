// hpcgate-session: the batch job's time left in JupyterLab, warnings at the site policy's
// thresholds, and a clear sentence when the session reaches its walltime (in place of
// JupyterLab's "server unavailable" dialog, whose plugin package.json disables).
//
// Reads GET {base}hpcgate/session (gateway/job/session.py): the hub's card for this server.
import { ConnectionLost, IConnectionLost } from "@jupyterlab/application";
import { Dialog, Notification, showDialog } from "@jupyterlab/apputils";
import { PageConfig, URLExt } from "@jupyterlab/coreutils";
import { ServerConnection } from "@jupyterlab/services";
import { Widget } from "@lumino/widgets";

const state = { card: null, skew: 0, warned: new Set(), ended: false };

function words(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  const n = (v, unit) => `${v} ${unit}${v === 1 ? "" : "s"}`;
  if (h) { return n(h, "hour") + (m ? " " + n(m, "minute") : ""); }
  if (m) { return n(m, "minute") + (m < 10 && s ? " " + n(s, "second") : ""); }
  return n(s, "second");
}

function hubHome() {
  return URLExt.join(PageConfig.getOption("hubPrefix") || "/hub/", "home");
}

function secondsLeft() {
  const card = state.card;
  if (!card || !card.ends) { return null; }
  return card.ends - (Date.now() / 1000 + state.skew);
}

async function fetchCard() {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, "hpcgate", "session");
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) { return; }
  const card = await response.json();
  state.card = card;
  state.skew = card.now - Date.now() / 1000;
}

function timeLimitDialog() {
  if (state.ended) { return Promise.resolve(); }
  state.ended = true;
  const body = "This session reached its time limit: the scheduler ended its batch job" +
    (state.card && state.card.job_id ? ` (job ${state.card.job_id})` : "") +
    " and its kernels were stopped. Save nothing more here; relaunch it from the Sessions page.";
  return showDialog({
    title: "Session reached its time limit",
    body,
    buttons: [Dialog.cancelButton({ label: "Close" }), Dialog.okButton({ label: "Relaunch" })]
  }).then(result => {
    if (result.button.accept) { window.location.href = hubHome(); }
  });
}

const timeLeft = {
  id: "hpcgate-session:time-left",
  description: "The batch job's time left, and warnings before the walltime.",
  autoStart: true,
  activate: app => {
    const widget = new Widget();
    widget.id = "hpcgate-time-left";
    widget.addClass("hpcgate-time-left");
    widget.node.setAttribute("role", "timer");
    widget.node.setAttribute("aria-live", "off");
    widget.node.title = "Time left before the scheduler ends this session (its walltime)";
    app.shell.add(widget, "top", { rank: 990 });

    function show() {
      const left = secondsLeft();
      if (left === null) { widget.node.textContent = ""; return; }
      const warnings = (state.card.warnings || []).slice().sort((a, b) => b - a);
      const low = warnings.length && left <= warnings[0];
      widget.node.textContent = `Time left: ${words(left)}`;
      widget.node.classList.toggle("hpcgate-time-low", !!low);
      for (const threshold of warnings) {
        if (left <= threshold && left > 0 && !state.warned.has(threshold)) {
          state.warned.add(threshold);
          Notification.warning(
            `${words(left)} left before the walltime ends this session (job ${state.card.job_id}). ` +
            "Save your work: the scheduler stops it at the limit.",
            { autoClose: false, actions: [{ label: "Sessions page", callback: () => window.open(hubHome(), "_blank") }] }
          );
        }
      }
      if (state.card.ending === "time-limit") { void timeLimitDialog(); }
    }
    async function poll() {
      try { await fetchCard(); } catch (err) { /* the server is going away: the dialog says why */ }
      show();
      const left = secondsLeft();
      setTimeout(poll, left !== null && left < 300 ? 5000 : 30000);
    }
    void poll();
    setInterval(show, 1000);
  }
};

const connectionLost = {
  id: "hpcgate-session:connection-lost",
  description: "Says that a session reached its time limit instead of 'server unavailable'.",
  autoStart: true,
  provides: IConnectionLost,
  activate: () => async (manager, err, translator) => {
    const left = secondsLeft();
    if ((state.card && state.card.ending === "time-limit") || (left !== null && left <= 5)) {
      return timeLimitDialog();
    }
    return ConnectionLost(manager, err, translator);
  }
};

export default [timeLeft, connectionLost];
