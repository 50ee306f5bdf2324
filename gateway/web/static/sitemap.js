// The site map, drawn as SVG in local metres (x east, y north; SVG y = -north). No tiles, fonts or library
// from the internet: the outline comes from the gateway's GeoJSON (projected there), else a metre grid.
"use strict";
(function () {
  const {el, clear, t, name} = window.LK;
  const STEPS = [50, 100, 200, 500, 1000, 2000, 5000, 10000];
  const SHAPES = {
    speaker: "M-7,-5 L-2,-5 L6,-11 L6,11 L-2,5 L-7,5 Z",
    sensor: "M0,-8 A8,8 0 1,1 0,8 A8,8 0 1,1 0,-8 Z",
    camera: "M-8,-6 L8,-6 L8,6 L-8,6 Z",
    drone: "M0,-12 L8,9 L0,4 L-8,9 Z",
    recorder: "M0,-10 L8,0 L0,10 L-8,0 Z",
    gateway: "M0,-10 L9,-5 L9,5 L0,10 L-9,5 L-9,-5 Z",
  };

  class SiteMapView {
    // svg: the <svg> element; opts: {px: marker size factor, onDevice(d), onPoint(x, y), circles: bool}
    constructor(svg, opts) {
      this.svg = svg;
      this.opts = Object.assign({px: 1, circles: true}, opts || {});
      this.markers = new Map();
      this.box = null;
      this.layers = {};
      for (const n of ["grid", "outline", "circles", "track", "marks", "devices", "pick"]) {
        this.layers[n] = svg.appendChild(el("svg:g", {class: "layer-" + n}));
      }
      this.selected = null;
      svg.addEventListener("click", (ev) => {
        if (ev.target.closest && ev.target.closest(".dev")) return;
        const p = this.toMap(ev);
        this.pick(p.x, p.y);
        if (this.opts.onPoint) this.opts.onPoint(p.x, p.y);
      });
      new ResizeObserver(() => this.frame()).observe(svg);
    }

    toMap(ev) {
      const pt = this.svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      const m = pt.matrixTransform(this.svg.getScreenCTM().inverse());
      return {x: Math.round(m.x), y: Math.round(-m.y)};
    }

    setMap(map) {
      const o = clear(this.layers.outline), lm = clear(this.layers.marks);
      this.paths = (map && map.paths) || [];
      this.landmarks = (map && map.landmarks) || [];
      for (const p of this.paths) {
        const d = p.pts.map((q, i) => (i ? "L" : "M") + q[0] + "," + (-q[1])).join(" ") + (p.closed ? " Z" : "");
        o.appendChild(el("svg:path", {d: d, class: p.closed ? "shore" : "line"}));
      }
      for (const m of this.landmarks) {
        lm.appendChild(el("svg:text", {x: m.xy[0], y: -m.xy[1], class: "landmark"}, m.name));
      }
    }

    // the box that shows the outline and every positioned device, with a margin
    fit(devices) {
      const xs = [], ys = [];
      for (const p of this.paths || []) for (const q of p.pts) { xs.push(q[0]); ys.push(q[1]); }
      for (const d of devices) if (d.xy) { xs.push(d.xy[0]); ys.push(d.xy[1]); }
      if (!xs.length) { xs.push(-500, 500); ys.push(-500, 500); }
      let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
      this.extent = {cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, w: Math.max(x1 - x0, 200) * 1.24, h: Math.max(y1 - y0, 200) * 1.24};
      this.frame();
    }

    // the view box: the extent, widened to the element's own proportions so the grid fills it
    frame() {
      if (!this.extent) return;
      const r = this.svg.getBoundingClientRect(), e = this.extent;
      let w = e.w, h = e.h;
      if (r.width && r.height) {
        const aspect = r.width / r.height;
        if (w / h < aspect) w = h * aspect; else h = w / aspect;
      }
      this.box = {x: e.cx - w / 2, y: -e.cy - h / 2, w: w, h: h};
      this.svg.setAttribute("viewBox", [this.box.x, this.box.y, this.box.w, this.box.h].join(" "));
      this.grid();
      this.rescale();
    }

    // metres per screen pixel (markers and text keep their on-screen size at any zoom)
    scale() {
      const r = this.svg.getBoundingClientRect();
      if (!this.box || !r.width) return 1;
      return Math.max(this.box.w / r.width, this.box.h / r.height);
    }

    rescale() {
      const s = this.scale() * this.opts.px;
      this.svg.style.setProperty("--s", s);
      for (const g of this.markers.values()) {
        g.shape.setAttribute("transform", "translate(" + g.x + "," + (-g.y) + ") scale(" + s + ") rotate(" + g.rot + ")");
        g.label.setAttribute("transform", "translate(" + g.x + "," + (-g.y) + ") scale(" + s + ")");
      }
      for (const n of this.svg.querySelectorAll(".landmark, .gridlabel, .picklabel")) {
        n.setAttribute("font-size", 13 * s);
      }
      if (this.pickAt) this.pick(this.pickAt.x, this.pickAt.y);
      this.svg.setAttribute("data-scale", s.toFixed(3));
    }

    grid() {
      const g = clear(this.layers.grid), b = this.box;
      const step = STEPS.find((v) => b.w / v <= 12) || 20000;
      for (let x = Math.ceil(b.x / step) * step; x <= b.x + b.w; x += step) {
        g.appendChild(el("svg:line", {x1: x, y1: b.y, x2: x, y2: b.y + b.h, class: "grid"}));
      }
      for (let y = Math.ceil(b.y / step) * step; y <= b.y + b.h; y += step) {
        g.appendChild(el("svg:line", {x1: b.x, y1: y, x2: b.x + b.w, y2: y, class: "grid"}));
      }
      g.appendChild(el("svg:text", {x: b.x + step * 0.1, y: b.y + b.h - step * 0.1, class: "gridlabel"},
        t("grid_step", {m: step})));
    }

    update(devices) {
      const seen = new Set();
      const circles = clear(this.layers.circles);
      for (const d of devices) {
        if (!d.xy) continue;
        seen.add(d.id);
        let g = this.markers.get(d.id);
        if (!g) {
          const shape = el("svg:path", {d: SHAPES[d.kind] || SHAPES.sensor});
          const label = el("svg:g", {class: "label"}, el("svg:text", {x: 0, y: 24}));
          const node = el("svg:g", {class: "dev", "data-id": d.id}, shape, label);
          node.addEventListener("click", (ev) => { ev.stopPropagation(); this.select(d.id); });
          this.layers.devices.appendChild(node);
          g = {node, shape, label, x: 0, y: 0, rot: 0};
          this.markers.set(d.id, g);
        }
        g.x = d.xy[0]; g.y = d.xy[1];
        g.rot = d.kind === "drone" && typeof d.hdg_cd === "number" ? d.hdg_cd / 100 : 0;
        g.node.setAttribute("class", "dev k-" + d.kind + " st-" + d.state + (this.selected === d.id ? " sel" : ""));
        g.shape.setAttribute("d", SHAPES[d.kind] || SHAPES.sensor);
        const extra = d.kind === "drone" || d.kind === "recorder" ? " " + window.LK.battery(d) : "";
        g.label.firstChild.textContent = name(d) + (extra === " —" ? "" : extra);
        const title = g.node.querySelector("title") || g.node.appendChild(el("svg:title", {}));
        title.textContent = name(d) + " · " + t("state_" + d.state) + ((d.info && d.info.statustext) ? " · " + d.info.statustext : "");
        if (this.opts.circles && d.kind === "recorder" && d.state !== "offline") {
          circles.appendChild(el("svg:circle", {cx: g.x, cy: -g.y, r: window.LK.boot.circle_m, class: "circle15"}));
        }
      }
      for (const [id, g] of this.markers) if (!seen.has(id)) { g.node.remove(); this.markers.delete(id); }
      this.rescale();
    }

    select(id) {
      this.selected = id;
      for (const [mid, g] of this.markers) g.node.classList.toggle("sel", mid === id);
      if (this.opts.onDevice) this.opts.onDevice(id);
    }

    pick(x, y) {
      const s = this.scale() * this.opts.px, g = clear(this.layers.pick);
      this.pickAt = {x, y};
      g.appendChild(el("svg:circle", {cx: x, cy: -y, r: 6 * s, class: "pick"}));
      g.appendChild(el("svg:circle", {cx: x, cy: -y, r: 600, class: "near"}));
    }

    track(points) {
      const g = clear(this.layers.track);
      if (points.length > 1) {
        g.appendChild(el("svg:polyline", {points: points.map((p) => p.xy[0] + "," + (-p.xy[1])).join(" "), class: "track"}));
      }
    }
  }
  window.LK.SiteMapView = SiteMapView;
})();
