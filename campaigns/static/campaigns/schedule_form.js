// The campaign form shows only the fields of the schedule chosen (and none for an API-triggered campaign).
(function () {
  "use strict";
  var FIELDS = {
    now: [],
    at: ["send_at", "time_zone", "at_local_time", "missed_window_minutes"],
    recurring: ["send_at", "time_zone", "recurrence", "cron", "ends_at", "at_local_time", "missed_window_minutes"],
  };
  var ALL = FIELDS.recurring;

  function row(name) {
    return document.querySelector(".form-row.field-" + name) || document.querySelector(".field-" + name);
  }

  function update() {
    var kind = document.getElementById("id_kind");
    var scheduleKind = document.getElementById("id_schedule_kind");
    var recurrence = document.getElementById("id_recurrence");
    if (!scheduleKind) return;
    var api = kind && kind.value === "api_triggered";
    var shown = api ? [] : FIELDS[scheduleKind.value] || ALL;
    ALL.forEach(function (name) {
      var el = row(name);
      if (!el) return;
      var visible = shown.indexOf(name) !== -1;
      if (name === "cron") visible = visible && recurrence && recurrence.value === "cron";
      el.hidden = !visible;
    });
    var kindRow = row("schedule_kind");
    if (kindRow) kindRow.hidden = api;
    var segmentRow = row("segment");
    if (segmentRow) segmentRow.hidden = api;
  }

  document.addEventListener("DOMContentLoaded", function () {
    ["id_kind", "id_schedule_kind", "id_recurrence"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.addEventListener("change", update);
    });
    update();
  });
})();
