// The doctor's console: show who checked in as it happens, without reloading.
(function () {
  "use strict";
  const panel = document.getElementById("console");
  if (!panel) return;
  const sessionId = Number(panel.dataset.sessionId);

  function refresh() {
    fetch(panel.dataset.queueUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (q) {
        panel.querySelector('[data-testid="serving"]').textContent = q.serving || "–";
        document.getElementById("waiting").textContent = q.waiting.length ? q.waiting.join(", ") : "–";
        document.getElementById("booked").textContent = q.booked_not_arrived;
      })
      .catch(function () { /* the next event tries again */ });
  }

  const source = new EventSource(panel.dataset.eventsUrl);
  ["queue.checked_in", "appointment.booked", "appointment.cancelled"].forEach(function (topic) {
    source.addEventListener(topic, function (event) {
      if (JSON.parse(event.data).session_id === sessionId) refresh();
    });
  });
})();
