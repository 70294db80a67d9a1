// The slide viewer: OpenSeadragon for the tiles, an SVG layer for annotations in slide micrometres,
// a scale bar, and the tools to draw, measure and save. Every text shown comes from the page's config.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("viewer-config").textContent);
  var T = config.text;
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var SVG_NS = "http://www.w3.org/2000/svg";
  var unit = config.calibrated ? "µm" : "px";

  var viewer = OpenSeadragon({
    id: "slide-viewer",
    tileSources: config.dzi,
    prefixUrl: config.osdImages,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    showRotationControl: true,
    showFullPageControl: true,
    navigatorAutoFade: false,
    autoHideControls: false,
    maxZoomPixelRatio: 1,
    visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
  });

  var svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "annotation-layer");
  svg.setAttribute("data-testid", "annotation-layer");
  viewer.canvas.appendChild(svg);

  var features = [];
  var tool = "pan";
  var pending = null; // {kind, points: [[xµm, yµm], ...], done: bool}
  var dragging = false;
  var status = document.querySelector("[data-testid=viewer-status]");
  var editor = document.querySelector("[data-testid=annotation-editor]");
  var list = document.querySelector("[data-testid=annotation-list]");
  var emptyNote = document.querySelector(".annotation-empty");

  function say(text) {
    status.textContent = text;
  }

  function toMicrons(event) {
    var rect = viewer.canvas.getBoundingClientRect();
    var point = new OpenSeadragon.Point(event.clientX - rect.left, event.clientY - rect.top);
    var image = viewer.viewport.viewerElementToImageCoordinates(point);
    return [round(image.x * config.mppX), round(image.y * config.mppY)];
  }

  function toScreen(position) {
    var point = new OpenSeadragon.Point(position[0] / config.mppX, position[1] / config.mppY);
    return viewer.viewport.imageToViewerElementCoordinates(point);
  }

  function round(value) {
    return Math.round(value * 1000) / 1000;
  }

  function distance(a, b) {
    return Math.hypot(b[0] - a[0], b[1] - a[1]);
  }

  function pathLength(points) {
    var total = 0;
    for (var i = 1; i < points.length; i += 1) total += distance(points[i - 1], points[i]);
    return total;
  }

  function ringArea(ring) {
    var total = 0;
    for (var i = 1; i < ring.length; i += 1) total += ring[i - 1][0] * ring[i][1] - ring[i][0] * ring[i - 1][1];
    return Math.abs(total) / 2;
  }

  function formatLength(um) {
    if (!config.calibrated) return um.toFixed(0) + " px";
    if (um >= 1000) return (um / 1000).toFixed(um >= 10000 ? 1 : 2) + " mm";
    return um.toFixed(um >= 100 ? 0 : 1) + " µm";
  }

  function formatArea(um2) {
    if (!config.calibrated) return um2.toFixed(0) + " px²";
    return (um2 / 1e6).toFixed(4) + " mm²";
  }

  function rectangleRing(a, b) {
    return [a, [b[0], a[1]], b, [a[0], b[1]], a];
  }

  function geometryOf(shape) {
    var kind = shape.kind;
    if (kind === "point" || kind === "text") return { type: "Point", coordinates: shape.points[0] };
    if (kind === "line" || kind === "measurement") return { type: "LineString", coordinates: shape.points };
    if (kind === "rectangle") return { type: "Polygon", coordinates: [rectangleRing(shape.points[0], shape.points[1])] };
    return { type: "Polygon", coordinates: [shape.points.concat([shape.points[0]])] };
  }

  function measureText(geometry) {
    if (geometry.type === "LineString") return T.length + " " + formatLength(pathLength(geometry.coordinates));
    if (geometry.type === "Polygon") return T.area + " " + formatArea(ringArea(geometry.coordinates[0]));
    return "";
  }

  function element(name, attributes) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach(function (key) {
      node.setAttribute(key, attributes[key]);
    });
    return node;
  }

  function drawGeometry(geometry, properties, className) {
    var group = element("g", { class: className });
    var screen;
    if (geometry.type === "Point") {
      screen = toScreen(geometry.coordinates);
      group.appendChild(element("circle", { cx: screen.x, cy: screen.y, r: 6 }));
      if (properties.label) {
        var text = element("text", { x: screen.x + 9, y: screen.y - 9 });
        text.textContent = properties.label;
        group.appendChild(text);
      }
      return group;
    }
    var positions = geometry.type === "Polygon" ? geometry.coordinates[0] : geometry.coordinates;
    var points = positions.map(function (p) {
      var s = toScreen(p);
      return s.x.toFixed(1) + "," + s.y.toFixed(1);
    });
    group.appendChild(element(geometry.type === "Polygon" ? "polygon" : "polyline", { points: points.join(" ") }));
    var last = toScreen(positions[positions.length - 1]);
    var caption = [properties.label || "", properties.kind === "measurement" ? measureText(geometry) : ""]
      .filter(Boolean)
      .join(" · ");
    if (caption) {
      var label = element("text", { x: last.x + 8, y: last.y - 8 });
      label.textContent = caption;
      group.appendChild(label);
    }
    return group;
  }

  function redraw() {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    features.forEach(function (feature) {
      svg.appendChild(drawGeometry(feature.geometry, feature.properties, "annotation kind-" + feature.properties.kind));
    });
    if (pending && pending.points.length) {
      var shape = pending;
      if (shape.kind === "rectangle" && shape.points.length < 2) return;
      if (shape.kind === "polygon" && !shape.done) {
        svg.appendChild(
          drawGeometry({ type: "LineString", coordinates: shape.points.concat(shape.cursor ? [shape.cursor] : []) }, {}, "annotation pending")
        );
        return;
      }
      svg.appendChild(drawGeometry(geometryOf(shape), { kind: shape.kind }, "annotation pending kind-" + shape.kind));
    }
  }

  function updateScaleBar() {
    var imageZoom = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    if (!imageZoom) return;
    var perPixel = config.mppX / imageZoom;
    var target = perPixel * 120;
    var magnitude = Math.pow(10, Math.floor(Math.log10(target)));
    var nice = [1, 2, 5, 10]
      .map(function (m) {
        return m * magnitude;
      })
      .filter(function (v) {
        return v <= target;
      })
      .pop() || magnitude;
    var bar = document.querySelector(".scale-bar-line");
    bar.style.width = Math.round(nice / perPixel) + "px";
    document.querySelector(".scale-bar-label").textContent = formatLength(nice);
  }

  ["open", "animation", "resize", "rotate", "update-viewport"].forEach(function (name) {
    viewer.addHandler(name, function () {
      redraw();
      updateScaleBar();
    });
  });

  function setTool(name) {
    tool = name;
    pending = null;
    dragging = false;
    document.querySelectorAll("[data-tool]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-tool") === name ? "true" : "false");
    });
    var drawing = name !== "pan";
    viewer.setMouseNavEnabled(!drawing);
    svg.classList.toggle("drawing", drawing);
    if (editor) editor.hidden = true;
    say(name === "polygon" ? T.polygonHint : "");
    redraw();
  }

  function finish(shape) {
    shape.done = true;
    pending = shape;
    redraw();
    if (!editor) return;
    editor.hidden = false;
    editor.querySelector("[data-testid=pending-measure]").textContent =
      T[shape.kind] + (measureText(geometryOf(shape)) ? " — " + measureText(geometryOf(shape)) : "");
    editor.querySelector("input[name=label]").focus();
  }

  svg.addEventListener("pointerdown", function (event) {
    if (tool === "pan" || event.button !== 0) return;
    event.preventDefault();
    event.stopPropagation();
    var here = toMicrons(event);
    if (tool === "point" || tool === "text") {
      finish({ kind: tool, points: [here] });
    } else if (tool === "polygon") {
      if (!pending || pending.done) pending = { kind: "polygon", points: [] };
      pending.points.push(here);
      redraw();
    } else {
      pending = { kind: tool, points: [here, here] };
      dragging = true;
      svg.setPointerCapture(event.pointerId);
      if (editor) editor.hidden = true;
    }
  });

  svg.addEventListener("pointermove", function (event) {
    if (tool === "pan" || !pending) return;
    event.stopPropagation();
    if (dragging) {
      pending.points[1] = toMicrons(event);
      redraw();
    } else if (tool === "polygon" && !pending.done) {
      pending.cursor = toMicrons(event);
      redraw();
    }
  });

  svg.addEventListener("pointerup", function (event) {
    if (!dragging) return;
    event.stopPropagation();
    dragging = false;
    pending.points[1] = toMicrons(event);
    if (distance(pending.points[0], pending.points[1]) > 0) finish(pending);
  });

  svg.addEventListener("dblclick", function (event) {
    if (tool !== "polygon" || !pending || pending.done) return;
    event.preventDefault();
    event.stopPropagation();
    // The double click's two presses each added a corner; keep one.
    pending.points.pop();
    delete pending.cursor;
    if (pending.points.length >= 3) finish(pending);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") setTool("pan");
    if (event.key === "Enter" && tool === "polygon" && pending && !pending.done && pending.points.length >= 3) {
      event.preventDefault();
      delete pending.cursor;
      finish(pending);
    }
  });

  document.querySelectorAll("[data-tool]").forEach(function (button) {
    button.addEventListener("click", function () {
      setTool(button.getAttribute("data-tool"));
    });
  });

  function describe(feature) {
    var p = feature.properties;
    var parts = [T[p.kind] || p.kind];
    if (p.label) parts.push("“" + p.label + "”");
    if (p.length_um !== undefined) parts.push(formatLength(p.length_um));
    if (p.area_mm2 !== undefined) parts.push(config.calibrated ? p.area_mm2.toFixed(4) + " mm²" : formatArea(p.area_mm2 * 1e6));
    parts.push(T.by + " " + p.author);
    return parts.join(" · ");
  }

  function renderList() {
    list.innerHTML = "";
    features.forEach(function (feature) {
      var item = document.createElement("li");
      item.setAttribute("data-testid", "annotation-item");
      item.setAttribute("data-kind", feature.properties.kind);
      var text = document.createElement("button");
      text.type = "button";
      text.className = "link-button";
      text.textContent = describe(feature);
      text.addEventListener("click", function () {
        var g = feature.geometry;
        var first = g.type === "Polygon" ? g.coordinates[0][0] : g.type === "Point" ? g.coordinates : g.coordinates[0];
        var center = viewer.viewport.imageToViewportCoordinates(first[0] / config.mppX, first[1] / config.mppY);
        viewer.viewport.panTo(center);
      });
      item.appendChild(text);
      if (!config.readOnly && feature.properties.author_id === config.userId) {
        var remove = document.createElement("button");
        remove.type = "button";
        remove.className = "btn btn-ghost";
        remove.textContent = T.delete;
        remove.addEventListener("click", function () {
          fetch(config.annotations + "/" + feature.id, {
            method: "DELETE",
            headers: { "X-CSRFToken": csrf },
            credentials: "same-origin",
          }).then(function (response) {
            if (response.ok) load();
          });
        });
        item.appendChild(remove);
      }
      list.appendChild(item);
    });
    emptyNote.hidden = features.length > 0;
    if (!config.calibrated && features.length) say(T.uncalibrated);
  }

  function load() {
    return fetch(config.annotations, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json();
      })
      .then(function (collection) {
        features = collection.features || [];
        renderList();
        redraw();
      });
  }

  if (editor) {
    editor.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!pending || !pending.done) {
        say(T.drawFirst);
        return;
      }
      var label = editor.querySelector("input[name=label]").value.trim();
      if (pending.kind === "text" && !label) {
        say(T.textNeeded);
        return;
      }
      var feature = { type: "Feature", geometry: geometryOf(pending), properties: { kind: pending.kind, label: label } };
      fetch(config.annotations, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify(feature),
      })
        .then(function (response) {
          return response.json().then(function (body) {
            return { ok: response.ok, body: body };
          });
        })
        .then(function (result) {
          if (!result.ok) {
            say(T.saveFailed + " " + (result.body.message || ""));
            return;
          }
          features.push(result.body);
          pending = null;
          editor.hidden = true;
          editor.reset();
          renderList();
          redraw();
          say(T.saved);
        });
    });
    editor.querySelector("[data-action=discard]").addEventListener("click", function () {
      pending = null;
      editor.hidden = true;
      editor.reset();
      redraw();
    });
  }

  load();
})();
