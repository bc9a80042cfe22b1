// The journey form shows only the fields of the entry chosen: a segment (read once, or again every
// N hours) or an event.
(function () {
  "use strict";
  var FIELDS = {
    segment: ["entry_segment", "entry_every_hours"],
    event: ["entry_event"],
  };
  var ALL = FIELDS.segment.concat(FIELDS.event);

  function row(name) {
    return document.querySelector(".form-row.field-" + name) || document.querySelector(".field-" + name);
  }

  function update() {
    var kind = document.getElementById("id_entry_kind");
    if (!kind) return;
    var shown = FIELDS[kind.value] || ALL;
    ALL.forEach(function (name) {
      var el = row(name);
      if (el) el.hidden = shown.indexOf(name) === -1;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var kind = document.getElementById("id_entry_kind");
    if (kind) kind.addEventListener("change", update);
    update();
  });
})();
