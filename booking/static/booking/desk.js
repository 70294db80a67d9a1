// The desk: scan a booking's QR with the camera where the browser can read barcodes.
(function () {
  "use strict";
  const button = document.getElementById("scan");
  const video = document.getElementById("scan-video");
  const form = document.getElementById("checkin-form");
  if (!button || !("BarcodeDetector" in window) || !navigator.mediaDevices) return;
  button.hidden = false;
  button.addEventListener("click", async function () {
    const detector = new window.BarcodeDetector({ formats: ["qr_code"] });
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    async function look() {
      const codes = await detector.detect(video).catch(function () { return []; });
      if (codes.length) {
        stream.getTracks().forEach(function (t) { t.stop(); });
        form.elements.code.value = codes[0].rawValue;
        form.requestSubmit();
        return;
      }
      window.requestAnimationFrame(look);
    }
    look();
  });
})();
