// The page's buttons (cancel, retry, replay, discard). Each names the API call it makes
// (data-method, data-url); a click asks for a confirmation (data-confirm), makes the call with
// the login cookie (same origin), and shows the API's answer, a refusal included: 403 when the
// token lacks the operate scope, 409 when the saga's state does not allow it. After a success
// the page reloads (data-then="reload", the answer kept across the reload) or the row leaves
// the page (data-then="remove:<id>"). Served by the orchestrator: nothing from elsewhere.
(function () {
  "use strict";
  var KEPT = "saga-page-message";

  function show(kind, text) {
    var message = document.getElementById("message");
    if (!message) { return; }
    message.className = "message " + kind;
    message.textContent = text;
  }

  try {
    var kept = JSON.parse(window.sessionStorage.getItem(KEPT) || "null");
    window.sessionStorage.removeItem(KEPT);
    if (kept && kept.path === window.location.pathname) { show(kept.kind, kept.text); }
  } catch (e) { /* no storage: nothing kept */ }

  function label(button) {
    return (button.textContent || "").replace("…", "").trim().toLowerCase();
  }

  function success(button, status, body) {
    var what = label(button);
    if (body && body.state) {
      return what + " accepted (" + status + "): the saga is " + body.state +
        (body.stop_reason ? ", stop reason " + body.stop_reason : "") + ".";
    }
    if (body && body.subject) {
      return what + " done (" + status + "): dead letter " + body.id + " published again on " + body.subject + ".";
    }
    return what + " done (" + status + ").";
  }

  function refusal(button, status, body) {
    var what = label(button);
    var code = body && body.code ? " " + body.code : "";
    var detail = body && body.detail ? ": " + body.detail : "";
    if (status === 403) {
      return "Refused (403" + code + "): your token may not " + what + detail +
        ". Log in with a token that has the operate scope.";
    }
    if (status === 401) {
      return "Refused (401" + code + "): you are not logged in any more; log in again.";
    }
    return what + " refused (" + status + code + ")" + detail + ".";
  }

  function act(button) {
    var question = button.getAttribute("data-confirm") || "Are you sure?";
    if (!window.confirm(question)) {
      show("info", label(button) + ": nothing was done.");
      return;
    }
    button.disabled = true;
    show("info", label(button) + ": asking the platform…");
    fetch(button.getAttribute("data-url"), {
      method: button.getAttribute("data-method") || "POST",
      credentials: "same-origin",
      headers: { "accept": "application/json" }
    })
      .then(function (response) {
        return response.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          return { status: response.status, ok: response.ok, body: body };
        });
      })
      .then(function (answer) {
        if (!answer.ok) {
          button.disabled = false;
          show("error", refusal(button, answer.status, answer.body));
          return;
        }
        var text = success(button, answer.status, answer.body);
        show("ok", text);
        var then = button.getAttribute("data-then") || "";
        if (then === "reload") {
          try {
            window.sessionStorage.setItem(KEPT, JSON.stringify({ path: window.location.pathname, kind: "ok", text: text }));
          } catch (e) { /* the answer is shown until the reload */ }
          window.setTimeout(function () { window.location.reload(); }, 800);
        } else if (then.indexOf("remove:") === 0) {
          var row = document.getElementById(then.slice("remove:".length));
          if (row) { row.remove(); }
          var count = document.getElementById("dead-letter-count");
          if (count) { count.textContent = String(Math.max(0, parseInt(count.textContent, 10) - 1)); }
        }
      })
      .catch(function (error) {
        button.disabled = false;
        show("error", label(button) + " failed: " + error.message);
      });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-url]") : null;
    if (!button || button.disabled) { return; }
    event.preventDefault();
    act(button);
  });
})();
