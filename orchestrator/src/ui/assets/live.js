// Follows the saga shown on this page (its server-sent events) and shows the page again when
// the saga's state changes. Served by the orchestrator: the page loads nothing from elsewhere.
(function () {
  "use strict";
  var page = document.getElementById("saga");
  if (!page || !window.EventSource) { return; }
  var shown = page.getAttribute("data-state");
  var terminal = ["completed", "compensated", "failed", "cancelled"];
  var status = document.getElementById("live");
  var events = new EventSource("/v1/sagas/" + encodeURIComponent(page.getAttribute("data-saga-id")) + "/events");
  events.onopen = function () { if (status) { status.textContent = "live"; } };
  events.onerror = function () { if (status) { status.textContent = "reconnecting…"; } };
  events.addEventListener("saga", function (event) {
    var saga;
    try { saga = JSON.parse(event.data); } catch (e) { return; }
    if (terminal.indexOf(saga.state) >= 0) { events.close(); }
    if (saga.state !== shown) { window.location.reload(); }
  });
})();
