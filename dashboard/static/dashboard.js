/* Migration Dashboard: small progressive enhancements, no build step.
   The pages work without this file; with it, times read in the reader's own
   zone (UTC stays in their title) and ids and SQL get a copy button. */
(function () {
  "use strict";

  function pad(n) { return String(n).padStart(2, "0"); }

  function relative(ms) {
    var s = Math.round(ms / 1000), future = s < 0;
    s = Math.abs(s);
    var text = s < 60 ? "just now" : s < 3600 ? Math.round(s / 60) + " min" :
      s < 86400 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " d";
    if (text === "just now") return text;
    return future ? "in " + text : text + " ago";
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
      el.textContent = when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" +
        pad(when.getDate()) + " " + pad(when.getHours()) + ":" + pad(when.getMinutes()) +
        ":" + pad(when.getSeconds());
      el.title = el.title + " · shown in " + zone + " · " + relative(Date.now() - when);
      el.setAttribute("data-local", zone);
    });
  }

  function copyButtons(root) {
    root.querySelectorAll("[data-copy]:not([data-copy-ready])").forEach(function (el) {
      el.setAttribute("data-copy-ready", "");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy " + (el.getAttribute("data-copy") || "text"));
      button.addEventListener("click", function () {
        var text = el.innerText;
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
        } else {
          fallback(text);
          done();
        }
      });
      el.insertAdjacentElement("afterend", button);
    });
  }

  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    area.remove();
  }

  function enhance(root) {
    localTimes(root);
    copyButtons(root);
  }

  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
})();
