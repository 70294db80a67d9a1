// A patient's booking page: look again at the booking whenever the queue moves.
(function () {
  "use strict";
  const ticket = document.getElementById("ticket");
  if (!ticket) return;
  const labels = JSON.parse(document.getElementById("status-labels").textContent);
  const sessionId = Number(ticket.dataset.sessionId);

  function hhmm(iso) {
    const d = new Date(iso);
    return d.toLocaleTimeString("vi-VN", { hour: "2-digit", minute: "2-digit", hour12: false, timeZone: "Asia/Ho_Chi_Minh" });
  }

  function refresh() {
    fetch(ticket.dataset.bookingUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (b) {
        ticket.querySelector('[data-field="status"]').textContent = labels[b.status] || b.status;
        ticket.querySelector('[data-field="estimated_call_time"]').textContent = hhmm(b.estimated_call_time);
        ticket.querySelector('[data-field="ahead"]').textContent = b.ahead;
        ticket.querySelector('[data-field="now_serving"]').textContent = b.now_serving || "–";
      })
      .catch(function () { /* the next event tries again */ });
  }

  const source = new EventSource(ticket.dataset.eventsUrl);
  ["queue.called", "queue.checked_in", "queue.skipped", "queue.done", "appointment.cancelled", "appointment.booked"].forEach(function (topic) {
    source.addEventListener(topic, function (event) {
      if (JSON.parse(event.data).session_id === sessionId) refresh();
    });
  });
})();
