// The console's little JavaScript: everything works without it (a decision is two clicks on
// <details> panels); this only makes it smoother.
(function () {
  "use strict";

  // One confirmation panel open at a time; Escape or Cancel closes it; the note gets focus.
  document.addEventListener("toggle", function (event) {
    var opened = event.target;
    if (!(opened instanceof HTMLDetailsElement) || !opened.classList.contains("confirm") || !opened.open) return;
    document.querySelectorAll("details.confirm[open]").forEach(function (other) {
      if (other !== opened) other.open = false;
    });
    var first = opened.querySelector("input[name=note]") || opened.querySelector("button[type=submit]");
    if (first) first.focus();
  }, true);

  document.addEventListener("click", function (event) {
    var cancel = event.target.closest("[data-cancel]");
    if (cancel) cancel.closest("details").open = false;
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      document.querySelectorAll("details.confirm[open]").forEach(function (d) { d.open = false; });
    }
  });

  // A form is sent once: its buttons are disabled while the next page loads.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    form.querySelectorAll("button[type=submit]").forEach(function (b) {
      b.disabled = true;
      if (form.dataset.busy) b.textContent = form.dataset.busy;
    });
  });

  // Filter the queue's entries by any text they show.
  document.querySelectorAll("[data-filter]").forEach(function (input) {
    var target = document.querySelector(input.dataset.filter);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      target.querySelectorAll(".entry").forEach(function (entry) {
        var text = entry.textContent.toLowerCase();
        entry.hidden = !words.every(function (w) { return text.indexOf(w) !== -1; });
      });
    });
  });
})();
