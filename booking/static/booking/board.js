// The waiting hall's board: redraw on every queue event, and announce calls with a chime and speech.
(function () {
  "use strict";
  const board = document.getElementById("board");
  if (!board) return;
  const grid = document.getElementById("board-grid");
  const template = document.getElementById("clinic-template");
  const lastCalled = document.getElementById("last-called");
  const site = board.dataset.site;
  let audio = null;

  function text(number, room) {
    return board.dataset.announce.replace("{number}", number).replace("{room}", room.toLowerCase());
  }

  function chime() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      [659.25, 523.25].forEach(function (freq, i) {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        const start = audio.currentTime + i * 0.35;
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, start);
        gain.gain.exponentialRampToValueAtTime(0.3, start + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.6);
        osc.connect(gain).connect(audio.destination);
        osc.start(start);
        osc.stop(start + 0.65);
      });
    } catch (err) { /* no audio on this device: the board still shows the number */ }
  }

  function speak(sentence) {
    if (!("speechSynthesis" in window)) return;
    const utterance = new SpeechSynthesisUtterance(sentence);
    utterance.lang = board.dataset.lang;
    const voice = window.speechSynthesis.getVoices().find(function (v) { return v.lang && v.lang.startsWith(board.dataset.lang.slice(0, 2)); });
    if (voice) utterance.voice = voice;
    window.speechSynthesis.speak(utterance);
  }

  function render(clinics) {
    grid.replaceChildren();
    clinics.forEach(function (c) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.dataset.sessionId = c.session_id;
      card.querySelector(".room").textContent = c.room;
      card.querySelector(".clinic").textContent = c.clinic;
      const serving = card.querySelector(".queue-number");
      serving.textContent = c.serving || "–";
      serving.dataset.testid = "board-serving-" + c.session_id;
      card.querySelector(".board-next").textContent = c.next.length ? c.next.join(", ") : "–";
      grid.appendChild(card);
    });
  }

  function refresh() {
    return fetch(board.dataset.stateUrl, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(render)
      .catch(function () { /* the next event or reconnect refreshes again */ });
  }

  function announce(data) {
    const sentence = text(data.queue_number, data.room);
    lastCalled.textContent = sentence;
    refresh().then(function () {
      const card = grid.querySelector('[data-session-id="' + data.session_id + '"]');
      if (card) card.classList.add("flash");
    });
    chime();
    window.setTimeout(function () { speak(sentence); }, 800);
  }

  document.getElementById("sound-on").addEventListener("click", function (event) {
    chime();
    event.currentTarget.hidden = true;
  });

  const source = new EventSource(board.dataset.eventsUrl);
  source.addEventListener("open", refresh);
  source.addEventListener("queue.called", function (event) {
    const data = JSON.parse(event.data);
    if (data.site === site) announce(data);
  });
  ["queue.checked_in", "queue.skipped", "queue.done"].forEach(function (topic) {
    source.addEventListener(topic, function (event) {
      if (JSON.parse(event.data).site === site) refresh();
    });
  });
})();
