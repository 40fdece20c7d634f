// Keeps the list of sagas current: every 3 s while the tab is visible, loads this same page
// (same filters, same page) and puts its counts, rows and paging links in place of the shown
// ones. Served by the orchestrator: the page loads nothing from elsewhere.
(function () {
  "use strict";
  var parts = ["counts", "shown", "sagas", "paging"];
  var status = document.getElementById("live");
  var every = 3000;
  var busy = false;

  function say(text) {
    status = document.getElementById("live");
    if (status) { status.textContent = text; }
  }

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "accept": "text/html" } })
      .then(function (response) {
        if (response.redirected && new URL(response.url).pathname.indexOf("/ui/login") === 0) {
          throw new Error("logged out");
        }
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        parts.forEach(function (id) {
          var now = document.getElementById(id);
          var next = fresh.getElementById(id);
          if (now && next) { now.replaceWith(document.importNode(next, true)); }
        });
        say("live: updated " + new Date().toLocaleTimeString());
      })
      .catch(function (error) { say("not updated (" + error.message + "); retrying"); })
      .then(function () { busy = false; });
  }

  say("live: updates every 3 s");
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
