// A form's fields shown by a choice: a <select data-shows='{"choice": ["field", ...], ...}'> shows
// the rows of the fields its chosen value names and hides the rows of the fields the others name
// (a choice it does not name shows them all). Each form states its own map on its select.
(function () {
  "use strict";

  function row(name) {
    return document.querySelector(".form-row.field-" + name) || document.querySelector(".field-" + name);
  }

  function update(select) {
    var shows = JSON.parse(select.getAttribute("data-shows"));
    var all = [];
    Object.keys(shows).forEach(function (choice) {
      shows[choice].forEach(function (name) { if (all.indexOf(name) === -1) all.push(name); });
    });
    var shown = shows[select.value] || all;
    all.forEach(function (name) {
      var el = row(name);
      if (el) el.hidden = shown.indexOf(name) === -1;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("select[data-shows]").forEach(function (select) {
      select.addEventListener("change", function () { update(select); });
      update(select);
    });
  });
})();
