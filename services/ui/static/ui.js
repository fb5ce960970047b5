// The dashboard's only script: asks before an action that changes the store. Pages work without it.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
  const button = form.querySelector("button");
  const label = button ? button.textContent : "";
  if (label === "Skip" && !window.confirm("Give this notification up? The receiver sees a gap in event numbers.")) {
    event.preventDefault();
  }
});
