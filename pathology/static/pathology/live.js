// Reload a case list or a waiting case page when the event bus says something changed for it
// (a case sent to this site, taken, or reported; a slide's pyramid ready). Events carry ids only; the page shows the data.
(function () {
  "use strict";
  var anchor = document.getElementById("pathology-live");
  if (!anchor || !window.EventSource) return;
  var caseIds = Array.prototype.map.call(document.querySelectorAll("[data-case-id]"), function (node) {
    return node.getAttribute("data-case-id");
  });
  var siteId = anchor.getAttribute("data-site-id");
  var slideId = anchor.getAttribute("data-slide-id");
  var source = new EventSource(anchor.getAttribute("data-events"));
  source.addEventListener("open", function () {
    anchor.setAttribute("data-connected", "true");
  });
  function onEvent(event) {
    var data = JSON.parse(event.data);
    var mine = (data.case_id && caseIds.indexOf(data.case_id) !== -1) ||
      (siteId && event.type === "pathology.case.created" && String(data.receiving_site_id) === siteId) ||
      (slideId && data.slide_id === slideId);
    if (mine) {
      source.close();
      window.location.reload();
    }
  }
  anchor.getAttribute("data-topics").split(" ").forEach(function (topic) {
    source.addEventListener(topic, onEvent);
  });
})();
