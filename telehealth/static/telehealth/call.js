// The call page: camera preview, pre-call echo test, lobby, mesh WebRTC calls, chat.
// Plain WebRTC; the server relays signalling (POST + a fetch-read event stream) only.
(() => {
  "use strict";

  const root = document.getElementById("call");
  if (!root) return;
  const texts = JSON.parse(document.getElementById("call-texts").textContent);
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const apiBase = root.dataset.api;
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  let me = null;
  let isHost = false;
  let roomInfo = null;
  let iceServers = [];
  let clockOffset = 0;
  let localStream = null;
  let cameraTrack = null;
  let screenTrack = null;
  let stream = null;
  let inCall = false;
  let finished = false;
  let inbox = Promise.resolve();
  const peers = new Map();
  const known = new Map();
  const earlyCandidates = new Map();

  function say(text, kind) {
    const status = $("call-status");
    status.textContent = text;
    status.dataset.kind = kind || "info";
  }

  class CallError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", json, body } = {}) {
    const headers = { "X-Call-Token": token, "X-CSRFToken": csrf, Accept: "application/json" };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await fetch(apiBase + path, { method, headers, body, credentials: "same-origin" });
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      throw new CallError((data && data.message) || response.statusText, response.status, data && data.code);
    }
    return data;
  }

  function explain(error) {
    const byCode = {
      CALL_LINK_INVALID: texts.linkInvalid,
      CALL_LINK_EXPIRED: texts.linkInvalid,
      CALL_LINK_NOT_YOURS: texts.linkInvalid,
      CALL_DECLINED: texts.declined,
      CALL_ENDED: texts.ended,
      CALL_ROOM_FULL: texts.full,
      CALL_TOO_EARLY: texts.tooEarly,
    };
    return byCode[error.code] || error.message || texts.error;
  }

  // --- Devices -------------------------------------------------------------------------

  function deviceMessage(error) {
    const name = error && error.name;
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") return texts.noDevice;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") return texts.blocked;
    if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") return texts.deviceBusy;
    return texts.noDevice;
  }

  async function getMedia(constraints) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (error) {
      if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
        // One missing device should not cost the other: try each alone.
        for (const only of [{ audio: constraints.audio }, { video: constraints.video }]) {
          if (!Object.values(only)[0]) continue;
          try {
            const partial = await navigator.mediaDevices.getUserMedia(only);
            say(texts.noDevice, "warning");
            return partial;
          } catch (ignored) {
            // fall through to the next device kind
          }
        }
      }
      throw error;
    }
  }

  async function startMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.RTCPeerConnection) {
      say(texts.noMedia, "error");
      return null;
    }
    const camera = $("camera-select").value;
    const mic = $("mic-select").value;
    const constraints = {
      audio: mic ? { deviceId: { exact: mic } } : true,
      video: camera ? { deviceId: { exact: camera } } : true,
    };
    try {
      const fresh = await getMedia(constraints);
      if (localStream) localStream.getTracks().forEach((track) => track.stop());
      localStream = fresh;
      cameraTrack = localStream.getVideoTracks()[0] || null;
      $("local-video").srcObject = localStream;
      await listDevices();
      for (const entry of peers.values()) replaceTracks(entry.pc);
      return localStream;
    } catch (error) {
      say(deviceMessage(error), "error");
      return null;
    }
  }

  async function ensureMedia() {
    return localStream || (await startMedia());
  }

  async function listDevices() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [kind, select] of [["videoinput", $("camera-select")], ["audioinput", $("mic-select")]]) {
      const current = localStream && localStream.getTracks().find((t) => (kind === "videoinput" ? t.kind === "video" : t.kind === "audio"));
      const chosen = current ? current.getSettings().deviceId : select.value;
      select.replaceChildren(
        ...devices
          .filter((d) => d.kind === kind)
          .map((d, index) => {
            const option = new Option(d.label || `${kind === "videoinput" ? "Camera" : "Mic"} ${index + 1}`, d.deviceId);
            option.selected = d.deviceId === chosen;
            return option;
          })
      );
    }
  }

  function replaceTracks(pc) {
    for (const sender of pc.getSenders()) {
      if (!sender.track) continue;
      const kind = sender.track.kind;
      const fresh = kind === "video" ? screenTrack || cameraTrack : localStream.getAudioTracks()[0];
      if (fresh && fresh !== sender.track) sender.replaceTrack(fresh);
    }
  }

  // --- Event stream (fetch-read Server-Sent Events, so the token rides in a header) ----

  function openStream(onEvent) {
    const controller = new AbortController();
    let markConnected;
    const connected = new Promise((resolve) => (markConnected = resolve));
    (async () => {
      while (!controller.signal.aborted) {
        try {
          const response = await fetch(apiBase + "events", {
            headers: { "X-Call-Token": token, Accept: "text/event-stream" },
            signal: controller.signal,
            cache: "no-store",
          });
          if (!response.ok) {
            const data = await response.json().catch(() => ({}));
            markConnected();
            stopWith(explain(new CallError(data.message, response.status, data.code)));
            return;
          }
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              if (block.includes(": connected")) markConnected();
              const data = block
                .split("\n")
                .filter((line) => line.startsWith("data:"))
                .map((line) => line.slice(5).trimStart())
                .join("\n");
              if (data) onEvent(JSON.parse(data));
            }
          }
        } catch (error) {
          if (controller.signal.aborted) return;
        }
        await sleep(1000);
      }
    })();
    return { close: () => controller.abort(), connected };
  }

  // --- Joining, the lobby, leaving -----------------------------------------------------

  async function enter() {
    if (!token) {
      say(texts.noLink, "error");
      return;
    }
    $("join-button").disabled = true;
    say(texts.joining);
    await ensureMedia();
    if (stream) stream.close();
    stream = openStream(onEvent);
    await Promise.race([stream.connected, sleep(3000)]);
    let joined;
    try {
      joined = await api("join", { method: "POST" });
    } catch (error) {
      $("join-button").disabled = false;
      stopWith(explain(error));
      return;
    }
    me = joined.participant;
    isHost = joined.host;
    roomInfo = joined.room;
    iceServers = joined.ice_servers;
    clockOffset = joined.server_time - Date.now() / 1000;
    startCountdown();
    if (joined.state === "waiting") {
      inCall = false;
      say(texts.waiting);
      return;
    }
    inCall = true;
    say(texts.inCall, "ok");
    $("preview").hidden = true;
    $("controls").hidden = false;
    $("chat").hidden = false;
    $("end-button").hidden = !isHost;
    $("record-button").hidden = !isHost;
    showRecording(roomInfo.recording);
    $("lobby").hidden = !isHost;
    for (const peer of joined.peers) known.set(peer.id, peer);
    if (isHost) refreshLobby();
    loadChat();
    startQualityMonitor();
    for (const peer of joined.peers) {
      const entry = makePeer(peer, true);
      offer(entry).catch(console.error);
    }
  }

  function stopWith(message, kind) {
    finished = true;
    if (recorderPc) {
      recorderPc.close();
      recorderPc = null;
    }
    inCall = false;
    for (const id of [...peers.keys()]) closePeer(id);
    if (stream) stream.close();
    stream = null;
    $("controls").hidden = true;
    $("lobby").hidden = true;
    $("countdown").hidden = true;
    say(message, kind || "error");
  }

  function onEvent(event) {
    switch (event.type) {
      case "signal":
        inbox = inbox.then(() => handleSignal(event)).catch(console.error);
        break;
      case "joined":
        known.set(event.participant.id, event.participant);
        break;
      case "left":
        if (me && event.participant.id === me.id) break;
        closePeer(event.participant.id);
        break;
      case "lobby":
        if (event.decision === "admit") enter();
        else if (event.decision === "decline") stopWith(texts.declined);
        else if (event.decision === "back") {
          for (const id of [...peers.keys()]) closePeer(id);
          $("controls").hidden = true;
          $("chat").hidden = true;
          say(texts.sentBack);
          enter();
        } else if (event.waiting && isHost) renderLobby(event.waiting);
        break;
      case "chat":
        if (!seenMessages.has(event.id)) loadChat();
        break;
      case "recording":
        showRecording(event.state === "on");
        if (event.state === "off" && event.reason === "consent") say(texts.recordingConsentStopped, "warning");
        else if (event.state === "off" && event.reason === "stopped") say(texts.recordingStopped, "info");
        break;
      case "ended":
        stopWith(event.reason === "time" ? texts.endedTime : texts.ended, "info");
        break;
      default:
        break;
    }
  }

  async function refreshLobby() {
    try {
      renderLobby((await api("lobby")).waiting);
    } catch (error) {
      console.warn(error);
    }
  }

  function renderLobby(waiting) {
    const list = $("lobby-list");
    if (!waiting.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { textContent: texts.nobodyWaiting }));
      return;
    }
    list.replaceChildren(
      ...waiting.map((person) => {
        const item = document.createElement("li");
        item.dataset.participant = person.id;
        item.append(Object.assign(document.createElement("span"), { textContent: person.name }));
        for (const [action, label] of [["admit", texts.admit], ["decline", texts.decline]]) {
          const button = Object.assign(document.createElement("button"), { type: "button", className: "btn", textContent: label });
          button.dataset.action = action;
          button.addEventListener("click", () => decide(person.id, action));
          item.append(button);
        }
        return item;
      })
    );
  }

  async function decide(participant, action) {
    try {
      await api("lobby", { method: "POST", json: { participant, action } });
    } catch (error) {
      say(explain(error), "error");
    }
  }

  async function leave() {
    try {
      await api("leave", { method: "POST" });
    } catch (error) {
      console.warn(error);
    }
    stopWith(texts.left, "info");
    $("preview").hidden = false;
    $("join-button").disabled = false;
    finished = false;
  }

  async function endForEveryone() {
    try {
      await api("end", { method: "POST" });
    } catch (error) {
      say(explain(error), "error");
    }
  }

  // --- Peers ----------------------------------------------------------------------------

  const fingerprint = (sdp) => ((sdp || "").match(/a=fingerprint:\S+ (\S+)/) || [])[1];

  function remoteFigure(info) {
    const figure = document.createElement("figure");
    figure.dataset.participant = info.id;
    const video = Object.assign(document.createElement("video"), { autoplay: true, playsInline: true, className: "remote-video" });
    const caption = document.createElement("figcaption");
    caption.textContent = info.name || "";
    const role = (known.get(info.id) || info).role;
    if (isHost && role === "patient") {
      const back = Object.assign(document.createElement("button"), { type: "button", className: "btn", textContent: texts.sendBack });
      back.addEventListener("click", () => decide(info.id, "back"));
      caption.append(back);
    }
    figure.append(video, caption);
    $("remote-videos").append(figure);
    return { figure, video };
  }

  // Every connection has its own id; an offer is "<connection>.<serial>" and its answer
  // carries the same ref, so answers and candidates of a replaced offer or connection
  // (queued while the network was down) are told apart and dropped.
  const newConnectionId = () => Math.random().toString(36).slice(2, 12);
  const connectionOf = (ref) => (ref || "").split(".")[0];
  const retired = new Set(); // "<peer>:<connection>" of connections replaced by newer ones

  function makePeer(info, offerer, conn) {
    const pc = new RTCPeerConnection({ iceServers });
    const { figure, video } = remoteFigure(info);
    const entry = { id: info.id, name: info.name, pc, offerer, figure, video, pending: [], sending: Promise.resolve(), attempts: 0, recovery: null, remote: new MediaStream(), conn: conn || newConnectionId(), serial: 0, expected: null };
    peers.set(info.id, entry);
    if (localStream && localStream.getTracks().length) {
      for (const track of localStream.getTracks()) {
        pc.addTrack(track.kind === "video" && screenTrack ? screenTrack : track, localStream);
      }
    }
    for (const kind of ["audio", "video"]) {
      if (!pc.getSenders().some((s) => s.track && s.track.kind === kind)) pc.addTransceiver(kind, { direction: "recvonly" });
    }
    pc.onicecandidate = (event) => {
      if (peers.get(entry.id) !== entry) return;
      send(entry, { type: "candidate", ref: entry.conn, candidate: event.candidate ? event.candidate.toJSON() : null });
    };
    pc.ontrack = (event) => {
      entry.remote.addTrack(event.track);
      if (video.srcObject !== entry.remote) video.srcObject = entry.remote;
      video.play().catch(() => {});
    };
    pc.oniceconnectionstatechange = () => watch(entry);
    for (const early of earlyCandidates.get(info.id) || []) {
      if (!early.ref || connectionOf(early.ref) === entry.conn) entry.pending.push(early.candidate);
    }
    earlyCandidates.delete(info.id);
    return entry;
  }

  function send(entry, message) {
    // One request at a time per peer, so the offer always arrives before its candidates.
    entry.sending = entry.sending
      .then(() => api("signal", { method: "POST", json: { ...message, to: entry.id } }))
      .catch((error) => console.warn("signal", error));
    return entry.sending;
  }

  async function offer(entry, iceRestart = false) {
    if (entry.pc.signalingState === "have-local-offer") {
      // The last offer went unanswered (the peer was unreachable): start over from stable.
      await entry.pc.setLocalDescription({ type: "rollback" });
    }
    const description = await entry.pc.createOffer({ iceRestart });
    await entry.pc.setLocalDescription(description);
    entry.serial += 1;
    entry.expected = `${entry.conn}.${entry.serial}`;
    await send(entry, { type: "offer", ref: entry.expected, sdp: entry.pc.localDescription.sdp });
  }

  async function addCandidates(entry) {
    const waiting = entry.pending.splice(0);
    for (const candidate of waiting) {
      try {
        await entry.pc.addIceCandidate(candidate || undefined);
      } catch (error) {
        console.warn("candidate", error);
      }
    }
  }

  async function handleSignal(message) {
    if (!inCall) return;
    let entry = peers.get(message.from);
    const conn = connectionOf(message.ref);
    // A late message of a connection already replaced (it was sent before the new one).
    if (conn && retired.has(`${message.from}:${conn}`)) return;
    if (message.kind === "offer") {
      const replaced = conn
        ? entry && entry.conn !== conn
        : entry && entry.pc.remoteDescription && fingerprint(entry.pc.remoteDescription.sdp) !== fingerprint(message.sdp);
      if (replaced) {
        // A new connection from a peer that gave up on the old one.
        retired.add(`${entry.id}:${entry.conn}`);
        closePeer(entry.id);
        entry = null;
      }
      if (!entry) entry = makePeer({ id: message.from, name: message.name }, false, conn);
      await entry.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
      await addCandidates(entry);
      await entry.pc.setLocalDescription(await entry.pc.createAnswer());
      await send(entry, { type: "answer", ref: message.ref, sdp: entry.pc.localDescription.sdp });
    } else if (message.kind === "answer") {
      if (!entry || entry.pc.signalingState !== "have-local-offer") return;
      if (message.ref && message.ref !== entry.expected) return; // the answer to an offer since replaced
      await entry.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      await addCandidates(entry);
    } else if (message.kind === "candidate") {
      if (!entry) {
        const early = earlyCandidates.get(message.from) || [];
        early.push({ ref: message.ref, candidate: message.candidate });
        earlyCandidates.set(message.from, early);
        return;
      }
      if (conn && conn !== entry.conn) return; // a candidate of a connection since replaced
      entry.pending.push(message.candidate);
      if (entry.pc.remoteDescription) await addCandidates(entry);
    }
  }

  function closePeer(id) {
    const entry = peers.get(id);
    if (!entry) return;
    peers.delete(id);
    clearTimeout(entry.recovery);
    entry.pc.close();
    entry.figure.remove();
  }

  // Recovery after a network change: ICE restart (twice), then a brand-new connection.
  function watch(entry) {
    const state = entry.pc.iceConnectionState;
    if (state === "connected" || state === "completed") {
      clearTimeout(entry.recovery);
      entry.recovery = null;
      entry.attempts = 0;
      if (inCall) say(texts.inCall, "ok");
      return;
    }
    if ((state === "disconnected" || state === "failed") && inCall) {
      say(texts.reconnecting, "warning");
      if (!entry.offerer || entry.recovery) return;
      entry.recovery = setTimeout(() => recover(entry), state === "failed" ? 0 : 2500);
    }
  }

  async function recover(entry) {
    entry.recovery = null;
    if (!peers.has(entry.id) || ["connected", "completed"].includes(entry.pc.iceConnectionState)) return;
    entry.attempts += 1;
    try {
      // Fresh TURN credentials, unless the server is out of reach too: then the old ones.
      const fresh = await Promise.race([api("ice"), sleep(3000).then(() => null)]);
      if (fresh) iceServers = fresh.ice_servers;
    } catch (error) {
      if (error.status === 403 || error.status === 410) return stopWith(explain(error));
    }
    if (!peers.has(entry.id)) return;
    if (entry.attempts <= 2) {
      try {
        entry.pc.setConfiguration({ ...entry.pc.getConfiguration(), iceServers });
      } catch (error) {
        console.warn("ice servers", error);
      }
      entry.recovery = setTimeout(() => recover(entry), 6000);
      await offer(entry, true).catch(console.warn);
    } else {
      const info = { id: entry.id, name: entry.name };
      closePeer(entry.id);
      const fresh = makePeer(info, true);
      fresh.attempts = entry.attempts;
      fresh.recovery = setTimeout(() => recover(fresh), 10000);
      await offer(fresh).catch(console.warn);
    }
  }

  // --- Controls ----------------------------------------------------------------------

  function toggle(button, onLabel, offLabel, pressed) {
    button.setAttribute("aria-pressed", String(pressed));
    button.textContent = pressed ? offLabel : onLabel;
  }

  function toggleMute() {
    if (!localStream) return;
    const tracks = localStream.getAudioTracks();
    const muted = tracks.some((t) => t.enabled);
    tracks.forEach((t) => (t.enabled = !muted));
    toggle($("mute-button"), texts.mute, texts.unmute, muted);
  }

  function toggleCamera() {
    if (!cameraTrack) return;
    cameraTrack.enabled = !cameraTrack.enabled;
    toggle($("camera-button"), texts.cameraOff, texts.cameraOn, !cameraTrack.enabled);
  }

  async function toggleShare() {
    if (screenTrack) {
      screenTrack.stop();
      return stopShare();
    }
    try {
      const display = await navigator.mediaDevices.getDisplayMedia({ video: true });
      screenTrack = display.getVideoTracks()[0];
      screenTrack.addEventListener("ended", stopShare);
      for (const entry of peers.values()) replaceTracks(entry.pc);
      toggle($("share-button"), texts.share, texts.stopShare, true);
    } catch (error) {
      say(deviceMessage(error), "warning");
    }
  }

  function stopShare() {
    screenTrack = null;
    for (const entry of peers.values()) replaceTracks(entry.pc);
    toggle($("share-button"), texts.share, texts.stopShare, false);
  }

  // --- Countdown and network quality --------------------------------------------------

  let countdownTimer = null;
  function startCountdown() {
    clearInterval(countdownTimer);
    const element = $("countdown");
    const ends = Date.parse(roomInfo.ends_at) / 1000;
    const hardEnd = Date.parse(roomInfo.hard_end) / 1000;
    const format = (seconds) => {
      const s = Math.max(0, Math.floor(seconds));
      return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
    };
    const tick = () => {
      if (finished) return clearInterval(countdownTimer);
      const now = Date.now() / 1000 + clockOffset;
      element.hidden = false;
      if (now < ends) {
        element.textContent = `${texts.remaining}: ${format(ends - now)}`;
        element.classList.remove("warning");
      } else if (now < hardEnd) {
        element.textContent = `${texts.grace} ${format(hardEnd - now)}`;
        element.classList.add("warning");
      } else {
        clearInterval(countdownTimer);
        if (inCall) stopWith(texts.endedTime, "info");
      }
    };
    tick();
    countdownTimer = setInterval(tick, 1000);
  }

  let qualityTimer = null;
  function startQualityMonitor() {
    clearInterval(qualityTimer);
    const last = new Map();
    qualityTimer = setInterval(async () => {
      let worst = null;
      for (const entry of peers.values()) {
        const stats = await entry.pc.getStats();
        let rtt = null;
        let received = 0;
        let lost = 0;
        stats.forEach((report) => {
          if (report.type === "candidate-pair" && report.nominated && report.currentRoundTripTime !== undefined) rtt = report.currentRoundTripTime;
          if (report.type === "inbound-rtp") {
            received += report.packetsReceived || 0;
            lost += report.packetsLost || 0;
          }
        });
        const before = last.get(entry.id) || { received: 0, lost: 0 };
        last.set(entry.id, { received, lost });
        const deltaReceived = received - before.received;
        const deltaLost = Math.max(0, lost - before.lost);
        const loss = deltaReceived + deltaLost > 0 ? deltaLost / (deltaReceived + deltaLost) : deltaReceived === 0 ? 1 : 0;
        let grade = "good";
        if ((rtt !== null && rtt > 0.6) || loss > 0.08) grade = "poor";
        else if ((rtt !== null && rtt > 0.3) || loss > 0.02) grade = "fair";
        const order = { good: 0, fair: 1, poor: 2 };
        if (worst === null || order[grade] > order[worst]) worst = grade;
      }
      const element = $("quality");
      element.hidden = worst === null;
      if (worst) {
        element.dataset.quality = worst;
        element.textContent = { good: texts.qualityGood, fair: texts.qualityFair, poor: texts.qualityPoor }[worst];
      }
    }, 2000);
  }

  // --- Chat and files ----------------------------------------------------------------

  const seenMessages = new Set();
  function addChat(message) {
    if (seenMessages.has(message.id)) return;
    seenMessages.add(message.id);
    const item = document.createElement("li");
    item.dataset.message = message.id;
    const who = Object.assign(document.createElement("strong"), { textContent: (me && message.from === me.id ? texts.you : message.name) + ": " });
    item.append(who);
    if (message.file) {
      const link = Object.assign(document.createElement("button"), { type: "button", className: "btn", textContent: `${texts.file}: ${message.file.name}` });
      link.addEventListener("click", () => download(message));
      item.append(link);
    } else {
      item.append(document.createTextNode(message.text));
    }
    $("chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  async function loadChat() {
    try {
      (await api("chat")).messages.forEach(addChat);
    } catch (error) {
      console.warn(error);
    }
  }

  async function download(message) {
    const response = await fetch(`${apiBase}files/${message.id}`, { headers: { "X-Call-Token": token } });
    if (!response.ok) return say(texts.error, "error");
    const url = URL.createObjectURL(await response.blob());
    const anchor = Object.assign(document.createElement("a"), { href: url, download: message.file.name });
    anchor.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function sendChat(event) {
    event.preventDefault();
    const input = $("chat-text");
    const text = input.value.trim();
    if (!text) return;
    try {
      addChat(await api("chat", { method: "POST", json: { text } }));
      input.value = "";
    } catch (error) {
      say(explain(error), "error");
    }
  }

  async function shareFile() {
    const file = $("chat-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    try {
      addChat(await api("files", { method: "POST", body: form }));
    } catch (error) {
      say(explain(error), "error");
    }
    $("chat-file").value = "";
  }

  // --- Consented recording: while it runs, our media also goes to the server's recorder ---

  let recorderPc = null;
  function showRecording(on) {
    $("recording-banner").hidden = !on;
    $("record-button").textContent = on ? texts.stopRecording : texts.startRecording;
    $("record-button").dataset.recording = on ? "on" : "off";
    if (on && !recorderPc && inCall && $("consent").checked) sendToRecorder();
    if (!on && recorderPc) {
      recorderPc.close();
      recorderPc = null;
    }
  }

  async function sendToRecorder() {
    const pc = new RTCPeerConnection({ iceServers });
    recorderPc = pc;
    for (const track of localStream ? localStream.getTracks() : []) pc.addTransceiver(track, { direction: "sendonly", streams: [localStream] });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 3000);
      const answer = await api("recording/offer", { method: "POST", json: { sdp: pc.localDescription.sdp } });
      if (recorderPc === pc) await pc.setRemoteDescription(answer);
    } catch (error) {
      console.warn("recorder", error);
      pc.close();
      if (recorderPc === pc) recorderPc = null;
    }
  }

  async function toggleRecording() {
    const on = $("record-button").dataset.recording === "on";
    try {
      await api("recording", { method: "POST", json: { action: on ? "stop" : "start" } });
    } catch (error) {
      say(error.code === "RECORDING_CONSENT_MISSING" ? texts.consentMissing : explain(error), "warning");
    }
  }

  async function setConsent() {
    try {
      await api("consent", { method: "POST", json: { given: $("consent").checked } });
    } catch (error) {
      say(explain(error), "error");
    }
  }

  // --- Pre-call test: the server's echo peer sends our media back ---------------------

  let echoPc = null;
  function mark(check, ok, label) {
    const item = document.querySelector(`#echo [data-check="${check}"]`);
    item.dataset.state = ok === null ? "testing" : ok ? "ok" : "bad";
    item.textContent = label;
  }

  function gathered(pc, timeout) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return Promise.race([
      new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve())),
      sleep(timeout),
    ]);
  }

  async function precallTest() {
    if (!token) return say(texts.noLink, "error");
    if (!(await ensureMedia())) return;
    if (echoPc) echoPc.close();
    $("echo").hidden = false;
    mark("camera", null, texts.testing);
    mark("mic", null, texts.testing);
    mark("connection", null, texts.testing);
    const pc = new RTCPeerConnection({ iceServers: [] });
    echoPc = pc;
    const echoed = new MediaStream();
    const video = $("echo-video");
    pc.ontrack = (event) => {
      echoed.addTrack(event.track);
      video.srcObject = echoed;
      video.play().catch(() => {});
    };
    localStream.getTracks().forEach((track) => pc.addTrack(track, localStream));
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 3000);
      const answer = await api("echo", { method: "POST", json: { sdp: pc.localDescription.sdp } });
      await pc.setRemoteDescription(answer);
    } catch (error) {
      mark("connection", false, texts.connectionBad);
      mark("camera", false, texts.cameraBad);
      mark("mic", false, texts.micBad);
      say(explain(error), "error");
      return;
    }
    const deadline = Date.now() + 10000;
    let camera = false;
    let mic = false;
    let connected = false;
    while (Date.now() < deadline && !(camera && mic && connected)) {
      await sleep(500);
      connected = connected || pc.connectionState === "connected";
      const stats = await pc.getStats();
      stats.forEach((report) => {
        if (report.type !== "inbound-rtp") return;
        if (report.kind === "video" && (report.framesDecoded || 0) > 0 && video.videoWidth > 0) camera = true;
        if (report.kind === "audio" && (report.totalAudioEnergy || 0) > 0) mic = true;
      });
      if (connected) mark("connection", true, texts.connectionOk);
      if (camera) mark("camera", true, texts.cameraOk);
      if (mic) mark("mic", true, texts.micOk);
    }
    if (!connected) mark("connection", false, texts.connectionBad);
    if (!camera) mark("camera", false, texts.cameraBad);
    if (!mic) mark("mic", false, texts.micBad);
    setTimeout(() => pc.close(), 20000);
  }

  // --- Wiring -----------------------------------------------------------------------

  $("join-button").addEventListener("click", enter);
  $("test-button").addEventListener("click", precallTest);
  $("mute-button").addEventListener("click", toggleMute);
  $("camera-button").addEventListener("click", toggleCamera);
  $("share-button").addEventListener("click", toggleShare);
  $("leave-button").addEventListener("click", leave);
  $("end-button").addEventListener("click", endForEveryone);
  $("record-button").addEventListener("click", toggleRecording);
  $("consent").addEventListener("change", setConsent);
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-file").addEventListener("change", shareFile);
  $("camera-select").addEventListener("change", startMedia);
  $("mic-select").addEventListener("change", startMedia);
  window.addEventListener("beforeunload", () => {
    if (inCall) fetch(apiBase + "leave", { method: "POST", keepalive: true, headers: { "X-Call-Token": token, "X-CSRFToken": csrf } });
  });
  if (!token) say(texts.noLink, "error");
  else startMedia();
})();
