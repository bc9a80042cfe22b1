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
    // An API-triggered campaign has no schedule: not even its fieldset's heading.
    var fieldset = kindRow && kindRow.closest("fieldset");
    if (fieldset) fieldset.hidden = api;
    var segmentRow = row("segment");
    if (segmentRow) segmentRow.hidden = api;
  }

  // Beside the dates, the zone they are read in, as it is typed: the campaign's, or, sent at each
  // profile's local time, each profile's (the form's schedule_zone_text words it alike).
  function zoneNamed() {
    var timeZone = document.getElementById("id_time_zone");
    var local = document.getElementById("id_at_local_time");
    if (!timeZone) return;
    var zone = timeZone.value.trim() || "UTC";
    // A name that is no time zone the schedule takes (the field's datalist) is said to be none.
    var known = timeZone.list ? Array.prototype.some.call(timeZone.list.options, function (o) { return o.value === zone; }) : true;
    var named = known ? zone : "no such time zone: \u201c" + zone + "\u201d";
    var text = local && local.checked ? "(each profile's time zone; " + named + " for profiles without one)" : "(" + named + ")";
    document.querySelectorAll(".schedule-zone").forEach(function (el) {
      el.setAttribute("data-zone", zone);
      el.textContent = text;
    });
  }

  // The dates' help: the sentence naming the campaign's zone, or, at local time, each profile's.
  function zoneHelp() {
    var local = document.getElementById("id_at_local_time");
    var checked = String(Boolean(local && local.checked));
    document.querySelectorAll(".schedule-zone-help").forEach(function (el) {
      el.hidden = el.getAttribute("data-local") !== checked;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    ["id_kind", "id_schedule_kind", "id_recurrence"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.addEventListener("change", update);
    });
    ["input", "change"].forEach(function (event) {
      var timeZone = document.getElementById("id_time_zone");
      if (timeZone) timeZone.addEventListener(event, zoneNamed);
    });
    var local = document.getElementById("id_at_local_time");
    if (local) {
      local.addEventListener("change", zoneNamed);
      local.addEventListener("change", zoneHelp);
    }
    update();
  });
})();
