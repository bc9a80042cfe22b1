/* A time field that holds a time of day, not a moment (delivery.admin.rules.TimeOfDayWidget): Django's
   clock keeps its choices (midnight, 6 a.m., noon, 6 p.m.) but not "Now", the browser's time, nor
   the note of the browser's offset from the server's time (a profile's quiet hours are in its zone). */
'use strict';
{
  const fields = () => document.querySelectorAll("input[data-time-of-day]");

  // Before the clocks are drawn (DateTimeShortcuts.init, on load): each field's list without "Now".
  document.addEventListener("DOMContentLoaded", () => {
    const shortcuts = window.DateTimeShortcuts;
    if (!shortcuts) return;
    fields().forEach((input) => {
      shortcuts.clockHours[input.name] = shortcuts.clockHours.default_.filter(([, hour]) => hour !== -1);
    });
  });

  // After them: the "Now" link beside each field goes, and the bar between it and the clock, and
  // the note of the offset from the server's time.
  window.addEventListener("load", () => {
    fields().forEach((input) => {
      input.parentNode.querySelectorAll(".timezonewarning").forEach((note) => note.remove());
      const links = input.nextElementSibling && input.nextElementSibling.classList.contains("datetimeshortcuts")
        ? input.nextElementSibling.querySelectorAll("a") : [];
      const now = [...links].find((link) => !link.querySelector(".clock-icon"));
      if (!now) return;
      if (now.nextSibling && now.nextSibling.nodeType === Node.TEXT_NODE) now.nextSibling.remove();
      now.remove();
    });
  });
}
