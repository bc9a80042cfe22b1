/* Live progress of an import on its admin page: polls a small JSON endpoint until the import ends. */
(function () {
  "use strict";

  function poll(box) {
    var url = box.dataset.statusUrl;
    var bar = box.querySelector("progress");
    var text = box.querySelector(".import-progress-text");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          bar.value = data.percent;
          text.textContent = data.text + (data.error ? " — " + data.error : "");
          // The page's fields read the same answer as the bar: one source of truth, no reload needed.
          var fields = {
            status: data.status_display, rows_done: data.rows_done, rows_imported: data.rows_imported,
            rows_failed: data.rows_failed, rows_duplicate: data.rows_duplicate, error: data.error || "\u2014",
          };
          Object.keys(fields).forEach(function (name) {
            var cell = document.querySelector(".field-" + name + " .readonly");
            if (cell) cell.textContent = String(fields[name]);
          });
          if (data.status === "queued" || data.status === "running") {
            window.setTimeout(tick, 1000);
          } else {
            window.setTimeout(function () { window.location.reload(); }, 300);
          }
        })
        .catch(function () { window.setTimeout(tick, 3000); });
    }
    tick();
  }

  function start() {
    document.querySelectorAll(".import-progress").forEach(function (box) {
      var status = box.dataset.status;
      if (status === "queued" || status === "running") poll(box);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
