// Progressive enhancement; every page works without it.
//
// A form marked data-once is sent once: a second submit while the first is on its way
// (a double click on Upload) is cancelled, so the files are not sent and stored twice.
// The button says what is happening until the next page arrives.
"use strict";

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-once")) {
    return;
  }
  if (form.dataset.sending === "yes") {
    event.preventDefault();
    return;
  }
  form.dataset.sending = "yes";
  form.setAttribute("aria-busy", "true");
  var button = form.querySelector("button[type=submit]");
  if (button && button.dataset.sendingLabel) {
    button.textContent = button.dataset.sendingLabel;
  }
});

// Coming back to the page from the browser's history shows the form as it was left:
// ready to send again.
window.addEventListener("pageshow", function (event) {
  if (!event.persisted) {
    return;
  }
  document.querySelectorAll("form[data-once]").forEach(function (form) {
    delete form.dataset.sending;
    form.removeAttribute("aria-busy");
    var button = form.querySelector("button[type=submit]");
    if (button && button.dataset.label) {
      button.textContent = button.dataset.label;
    }
  });
});
