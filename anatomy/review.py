"""The review step: an inline app in which a person turns ranked hypotheses into a Plan.

``review(diagnosis, *, pairs=None, plan=None) -> ReviewApp`` takes a `Diagnosis`
(`anatomy.diagnose`) and shows, in JupyterLab (ipywidgets; plotly ``FigureWidget`` for
the figures that update):

- the ranked hypotheses, one row per concept (label, view and scope, direction, effect
  with its CI, q, replicated, n), sortable and filterable (significant only; global or
  prompt-conditioned); the arrow keys move through them;
- the selected hypothesis: pairs side by side with the concept's text marked
  (`anatomy.hypotheses.show_examples`), a "more examples" button, the histogram of its u,
  and the member SAE features' labels and top tokens;
- a decision for it: allow / explain away / amplify, a method among those that fit the
  concept's lens (`anatomy.interventions.METHODS`) and a strength;
- a live preview of that decision on the data before any training, computed by
  `anatomy.interventions.compile_plan` (what training gets): how many pairs change and by
  how much (histogram of offsets or weights), which pairs are dropped, which tokens of the
  shown examples are masked;
- the plan pane: the decisions so far, ``app.plan`` (a `Plan`), a "save" button that
  writes it as JSON; ``review(diagnosis, plan=Plan.load(path))`` reopens it.

A decision's preview is compiled once and cached by the decision, so going back to a
setting seen before costs nothing; methods whose compilation needs no forward pass
(offsets, weights, filters) never run the model.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ACTIONS = ("allow", "explain_away", "amplify")
ACTION_LABELS = {"allow": "allow", "explain_away": "explain away", "amplify": "amplify"}
SORT_KEYS = {"rank": ("rank", True), "q": ("q", True), "|effect|": ("abs_effect", False), "n": ("n", False)}
ROW_COLUMNS = ("concept", "label", "view", "scope", "direction", "effect", "ci_low", "ci_high", "q",
               "replicated", "n", "rank")


def _interventions():
    from . import interventions

    return interventions


def review(diagnosis, *, pairs=None, plan=None, model=None, sae=None, directions=None,
           q_max: float = 0.05, n_examples: int = 3, save_path: str | Path = "plan.json",
           seed: int = 0) -> "ReviewApp":
    """The review app on ``diagnosis``; display it in a notebook (it is a widget).

    diagnosis: a `Diagnosis` (its ``table(top=None)``, ``u``, ``clusters``, ``labels``).
    pairs: the pairs it was computed on (rows with id, prompt, chosen, rejected), for the
        examples and the preview; without them only the table and the plan are live.
    plan: a `Plan` to reopen (its decisions fill the rows they name).
    model / sae / directions: passed to `compile_plan` for methods that need them
        (token masks, hooks); methods that only shape offsets or weights need none.
    q_max: "significant only" keeps rows with q <= q_max. n_examples: pairs shown at first.
    save_path: where the "save" button writes the plan's JSON.
    """
    return ReviewApp(diagnosis, pairs=pairs, plan=plan, model=model, sae=sae, directions=directions,
                     q_max=q_max, n_examples=n_examples, save_path=save_path, seed=seed)


def hypothesis_rows(diagnosis) -> pd.DataFrame:
    """The diagnosis's hypotheses as one table of both views (the table vocabulary), with a
    ``key`` column naming each row uniquely ("global:all pairs:12")."""
    table = diagnosis.table(top=None)
    missing = [c for c in ROW_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the diagnosis table lacks column(s) {missing}")
    table = table.reset_index(drop=True).copy()
    table["key"] = [f"{v}:{s}:{c}" for v, s, c in zip(table["view"], table["scope"], table["concept"])]
    if table["key"].duplicated().any():
        dup = table.loc[table["key"].duplicated(), "key"].iloc[0]
        raise ValueError(f"the diagnosis table names row {dup!r} twice")
    table["abs_effect"] = table["effect"].abs()
    return table


def _labels_table(diagnosis) -> pd.DataFrame | None:
    labels = getattr(diagnosis, "labels", None)
    if isinstance(labels, pd.DataFrame) and "cluster" in labels.columns:
        return labels.set_index("cluster", drop=False)
    return None


def concept_ref(diagnosis, concept):
    """The `ConceptRef` of a table row's concept: an SAE cluster (with its member features)
    when the diagnosis's clusters name it, else a concept of the lens the table names."""
    iv = _interventions()
    clusters = getattr(diagnosis, "clusters", None)
    lens = getattr(diagnosis, "lens", None) or "sae"
    if clusters is not None and lens == "sae":
        try:
            cid = int(concept)
        except (TypeError, ValueError):
            cid = None
        if cid is not None:
            members = tuple(int(f) for f in clusters.loc[clusters["cluster"] == cid, "feature"])
            return iv.ConceptRef(lens="sae", name=str(concept), features=members, cluster=cid)
    return iv.ConceptRef(lens=lens if lens != "sae" else "annotator", name=str(concept))


def methods_for(ref) -> list[str]:
    """The methods whose lenses include the concept's (`interventions.METHODS`)."""
    return [m for m, lenses in _interventions().METHODS.items() if ref.lens in lenses]


def decision_key(decision) -> str:
    """A stable text key of a decision (its dict as sorted JSON), for caching previews."""
    d = decision.to_dict() if hasattr(decision, "to_dict") else _asdict(decision)
    return json.dumps(d, sort_keys=True, default=str)


def _asdict(obj):
    import dataclasses

    return dataclasses.asdict(obj)


def _ref_key(ref) -> str:
    return f"{ref.lens}:{ref.name}:{ref.cluster}"


def _scope_of(row) -> dict | None:
    """The decision's scope: None for an all-pairs row, the view's group otherwise."""
    g = row.get("group")
    if g is None or pd.isna(g) or int(g) == -1:
        return None
    return {"view": str(row["view"]), "group": int(row["group"])}


def preview_stats(inputs, all_ids) -> dict:
    """What one compiled decision does to the data: counts of dropped pairs, of pairs whose
    offset or weight moved, of masked tokens, and the values themselves for the histogram."""
    all_ids = [str(i) for i in all_ids]
    kept = [str(i) for i in inputs.ids]
    kept_set = set(kept)
    dropped = [i for i in all_ids if i not in kept_set]
    out = {"n_pairs": len(all_ids), "n_kept": len(kept), "dropped": dropped, "ids": kept}
    off = None if inputs.offsets is None else np.asarray(inputs.offsets, dtype=float)
    w = None if inputs.weights is None else np.asarray(inputs.weights, dtype=float)
    out["offsets"] = off
    out["weights"] = w
    out["n_offset"] = 0 if off is None else int(np.sum(off != 0))
    out["n_weight"] = 0 if w is None else int(np.sum(w != 1))
    n_masked, pairs_masked = 0, 0
    if inputs.token_masks is not None:
        for masks in inputs.token_masks:
            if masks is None:
                continue
            zeros = sum(int(np.sum(np.asarray(m) == 0)) for m in masks if m is not None)
            n_masked += zeros
            pairs_masked += zeros > 0
    out["n_masked_tokens"], out["n_pairs_masked"] = n_masked, pairs_masked
    out["n_hooks"] = len(inputs.policy_hooks or ())
    out["n_policy_prompts"] = 0 if inputs.policy_prompts is None else len(inputs.policy_prompts)
    out["summary"] = dict(inputs.summary or {})
    return out


class ReviewApp:
    """The review app (build it with `review`). ``app.widget`` is the ipywidgets tree;
    ``app.plan`` the current `Plan`; ``app.select(key)``, ``app.set_decision(...)`` and
    ``app.save(path)`` drive it from code; ``app.last_update_s`` the seconds the last
    control change took to redraw."""

    def __init__(self, diagnosis, *, pairs=None, plan=None, model=None, sae=None, directions=None,
                 q_max=0.05, n_examples=3, save_path="plan.json", seed=0):
        self.diagnosis = diagnosis
        self.model, self.sae, self.directions, self.seed = model, sae, directions, seed
        self.q_max = float(q_max)
        self.save_path = Path(save_path)
        self.rows = hypothesis_rows(diagnosis)
        self._labels = _labels_table(diagnosis)
        self._u = getattr(diagnosis, "u", None)
        self.pairs = None if pairs is None else _as_list(pairs)
        self._pair_ids = ([str(p["id"]) for p in self.pairs] if self.pairs is not None
                          else [str(i) for i in getattr(diagnosis, "pairs_ids", [])])
        self._decisions: dict[str, object] = {}      # row key -> Decision (not "allow")
        self._previews: dict[str, dict] = {}         # decision_key -> preview_stats
        self._tokens: dict[str, dict] = {}           # pair id -> {side: [token strings]}
        self._n_shown = int(n_examples)
        self._n_start = int(n_examples)
        self._selected: str | None = None
        self._busy = False
        self.last_update_s = 0.0
        self.update_times: list[float] = []
        if plan is not None:
            self._load_plan(plan)
        self._build()
        self._refresh_rows()

    # ----- the plan -----
    @property
    def plan(self):
        """The decisions made so far as a `Plan` (rows left at "allow" are not in it)."""
        iv = _interventions()
        order = {k: i for i, k in enumerate(self.rows["key"])}
        keys = sorted(self._decisions, key=lambda k: order.get(k, len(order)))
        return iv.Plan(decisions=tuple(self._decisions[k] for k in keys))

    def _load_plan(self, plan) -> None:
        by_ref = {}
        for key, concept, row in zip(self.rows["key"], self.rows["concept"], self.rows.to_dict("records")):
            ref = concept_ref(self.diagnosis, concept)
            by_ref.setdefault((_ref_key(ref), json.dumps(_scope_of(row), sort_keys=True)), key)
        for d in plan.decisions:
            k = by_ref.get((_ref_key(d.concept), json.dumps(d.scope, sort_keys=True)))
            if k is None:
                raise ValueError(f"the plan's decision on concept {d.concept.name!r} (scope {d.scope}) "
                                 f"names no row of this diagnosis")
            if d.action != "allow":
                self._decisions[k] = d

    def save(self, path: str | Path | None = None) -> Path:
        """Write the plan as JSON (``Plan.save``) to ``path`` or the app's save_path."""
        path = Path(path) if path is not None else self.save_path
        self.plan.save(path)
        self._status.value = f"saved {len(self.plan.decisions)} decision(s) to {html.escape(str(path))}"
        return path

    # ----- driving the app from code -----
    def select(self, key: str) -> None:
        """Select the row ``key`` (a value of ``app.rows['key']``)."""
        if key not in set(self.rows["key"]):
            raise KeyError(f"no row {key!r}")
        if key not in self._row_select.options_keys:
            self._filter_sig.value, self._filter_view.value = False, "all"
        self._row_select.value = key

    def set_decision(self, action: str, method: str | None = None, strength: float | None = None) -> None:
        """Set the selected row's decision as the controls would."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {ACTIONS}")
        with self._batch():
            self._action.value = action
            if method is not None:
                if method not in self._method.options:
                    raise ValueError(f"method {method!r} does not fit this concept's lens; "
                                     f"choose from {list(self._method.options)}")
                self._method.value = method
            if strength is not None:
                self._strength.value = float(strength)
        self._on_decision_change()

    def preview(self, key: str | None = None) -> dict | None:
        """The preview statistics of a row's current decision (None for "allow")."""
        key = key or self._selected
        d = self._decisions.get(key)
        return None if d is None else self._preview_of(d)

    # ----- layout -----
    def _build(self) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        self._filter_sig = W.Checkbox(value=False, description="significant only", indent=False)
        self._filter_view = W.ToggleButtons(options=[("all", "all"), ("global", "global"),
                                                     ("prompt-conditioned", "prompt")], value="all")
        self._sort = W.Dropdown(options=list(SORT_KEYS), value="rank", description="sort by",
                                layout=W.Layout(width="180px"))
        self._row_select = W.Select(options=[], rows=14, layout=W.Layout(width="100%"))
        self._row_select.options_keys = set()
        self._row_select.add_class("anatomy-rows")
        header = W.HTML("<style>.anatomy-rows select, .anatomy-rows option {font-family: monospace; "
                        "font-size: 12px}</style>"
                        f"<pre style='margin:0; font-size: 12px'>{html.escape(_row_header())}</pre>")
        for w in (self._filter_sig, self._filter_view, self._sort):
            w.observe(lambda ch: self._timed(self._refresh_rows), names="value")
        self._row_select.observe(lambda ch: self._timed(self._on_select), names="value")

        self._examples = W.HTML()
        self._examples.add_class("anatomy-examples-pane")
        self._more = W.Button(description="more examples", icon="plus")
        self._more.on_click(lambda b: self._timed(self._show_more))
        self._members = W.HTML()
        self._u_fig = go.FigureWidget(layout=dict(height=220, width=420, margin=dict(l=40, r=10, t=30, b=30),
                                                  title="u of the concept (chosen − rejected)"))
        self._u_fig.add_histogram(x=[], nbinsx=40, name="u")

        self._action = W.ToggleButtons(options=[(ACTION_LABELS[a], a) for a in ACTIONS], value="allow",
                                       description="decision")
        self._action.add_class("anatomy-action")
        self._method = W.Dropdown(options=[], description="method")
        self._strength = W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="strength",
                                       continuous_update=False, readout_format=".2f")
        self._strength.add_class("anatomy-strength")
        for w in (self._action, self._method, self._strength):
            w.observe(lambda ch: self._on_decision_change(), names="value")

        self._preview_html = W.HTML()
        self._preview_html.add_class("anatomy-preview")
        self._preview_fig = go.FigureWidget(layout=dict(height=220, width=420, margin=dict(l=40, r=10, t=30, b=30),
                                                        title="preview: offsets / weights of changed pairs"))
        self._preview_fig.add_histogram(x=[], nbinsx=30, name="preview")

        self._plan_html = W.HTML()
        self._plan_html.add_class("anatomy-plan")
        self._save_btn = W.Button(description="save plan", icon="save", button_style="primary")
        self._save_btn.add_class("anatomy-save")
        self._save_btn.on_click(lambda b: self.save())
        self._status = W.HTML()
        self._status.add_class("anatomy-status")
        self._timing = W.HTML()
        self._timing.add_class("anatomy-timing")

        left = W.VBox([W.HBox([self._filter_sig, self._sort]), self._filter_view, header, self._row_select,
                       W.HTML("<b>plan</b>"), self._plan_html, W.HBox([self._save_btn, self._status]),
                       self._timing], layout=W.Layout(width="52%"))
        right = W.VBox([W.HTML("<b>decision</b>"), self._action, self._method, self._strength,
                        self._preview_html, self._preview_fig, self._u_fig, self._members],
                       layout=W.Layout(width="48%"))
        self.widget = W.VBox([W.HBox([left, right]), W.HTML("<b>examples</b>"), self._examples, self._more])
        self.widget.add_class("anatomy-review")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ----- callbacks -----
    def _timed(self, fn):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        self.last_update_s = dt
        self.update_times.append(dt)
        self._timing.value = f"<small>last update {dt * 1000:.0f} ms</small>"

    class _BatchCtx:
        def __init__(self, app):
            self.app = app

        def __enter__(self):
            self.app._busy = True

        def __exit__(self, *exc):
            self.app._busy = False

    def _batch(self):
        return self._BatchCtx(self)

    def _visible_rows(self) -> pd.DataFrame:
        t = self.rows
        if self._filter_sig.value:
            t = t[t["q"] <= self.q_max]
        if self._filter_view.value != "all":
            t = t[t["view"] == self._filter_view.value]
        col, asc = SORT_KEYS[self._sort.value]
        by = [col, "view", "rank"] if col != "rank" else ["view", "rank"]
        return t.sort_values(by, ascending=[asc] + [True] * (len(by) - 1), kind="stable")

    def _refresh_rows(self) -> None:
        t = self._visible_rows()
        opts = [(self._row_text(r), r["key"]) for r in t.to_dict("records")]
        keep = self._selected if self._selected in set(t["key"]) else (opts[0][1] if opts else None)
        with self._batch():
            self._row_select.options = opts
            self._row_select.options_keys = {k for _, k in opts}
            self._row_select.value = keep
        if keep != self._selected or keep is None:
            self._on_select()
        self._refresh_plan()

    def _row_text(self, r: dict) -> str:
        mark = {"explain_away": "−", "amplify": "+"}.get(
            getattr(self._decisions.get(r["key"]), "action", "allow"), " ")
        rep = "yes" if bool(r["replicated"]) else "no"
        label = str(r["label"] or f"concept {r['concept']}")[:26]
        return (f"{mark} {r['view'][:6]:6} {str(r['scope'])[:16]:16} {label:26} {r['direction'][:3]:3} "
                f"{r['effect']:+.3f} [{r['ci_low']:+.3f},{r['ci_high']:+.3f}] q={r['q']:.1e} {rep:3} n={int(r['n'])}")

    def _row(self, key: str) -> dict:
        return self.rows.loc[self.rows["key"] == key].iloc[0].to_dict()

    def _on_select(self) -> None:
        if self._busy:
            return
        key = self._row_select.value
        self._selected = key
        self._n_shown = self._n_start
        if key is None:
            self._examples.value = self._members.value = ""
            return
        row = self._row(key)
        ref = concept_ref(self.diagnosis, row["concept"])
        with self._batch():
            self._method.options = methods_for(ref)
            d = self._decisions.get(key)
            self._action.value = d.action if d is not None else "allow"
            if d is not None:
                self._method.value = d.method
                self._strength.value = float(d.strength)
        self._draw_u(row)
        self._draw_members(ref)
        self._draw_decision()

    def _on_decision_change(self) -> None:
        if self._busy or self._selected is None:
            return
        t0 = time.perf_counter()
        key = self._selected
        row = self._row(key)
        if self._action.value == "allow" or self._method.value is None:
            self._decisions.pop(key, None)
        else:
            iv = _interventions()
            self._decisions[key] = iv.Decision(concept=concept_ref(self.diagnosis, row["concept"]),
                                               action=self._action.value, method=self._method.value,
                                               strength=float(self._strength.value), scope=_scope_of(row))
        self._draw_decision()
        self._update_row_text(key)
        self._refresh_plan()
        dt = time.perf_counter() - t0
        self.last_update_s = dt
        self.update_times.append(dt)
        self._timing.value = f"<small>last update {dt * 1000:.0f} ms</small>"

    def _update_row_text(self, key: str) -> None:
        opts = list(self._row_select.options)
        for i, (_, k) in enumerate(opts):
            if k == key:
                opts[i] = (self._row_text(self._row(k)), k)
        with self._batch():
            self._row_select.options = opts
            self._row_select.value = key

    def _show_more(self) -> None:
        self._n_shown += 3
        self._draw_examples(self._decisions.get(self._selected))

    # ----- drawing -----
    def _draw_u(self, row: dict) -> None:
        u = self._u
        col = row["concept"]
        if u is None or col not in u.columns:
            for c in u.columns if u is not None else ():
                if str(c) == str(col):
                    col = c
                    break
            else:
                self._u_fig.data[0].x = []
                return
        with self._u_fig.batch_update():
            self._u_fig.data[0].x = np.asarray(u[col], dtype=float)
            self._u_fig.layout.title = f"u of {row['label'] or col} (chosen − rejected)"

    def _draw_members(self, ref) -> None:
        if not ref.features:
            self._members.value = ""
            return
        parts = [f"<b>member features ({len(ref.features)})</b>"]
        lab = self._labels
        if lab is not None and ref.cluster in lab.index:
            r = lab.loc[ref.cluster]
            feats = list(r.get("features", ref.features))
            flabels = list(r.get("feature_labels", [""] * len(feats)))
            parts.append(f"<div>top tokens: {html.escape(_join(r.get('top_tokens', '')))}</div><ul>")
            parts += [f"<li>{int(f)}: {html.escape(_join(fl))}</li>" for f, fl in zip(feats, flabels)]
            parts.append("</ul>")
        else:
            parts.append("<div>" + ", ".join(str(f) for f in ref.features) + "</div>")
        self._members.value = "".join(parts)

    def _examples_ids(self, row: dict) -> list[str]:
        ex = row.get("examples")
        ids = [str(i) for i in ex] if isinstance(ex, (list, tuple, np.ndarray)) else []
        if len(ids) < self._n_shown and self._u is not None and row["concept"] in self._u.columns:
            vals = np.asarray(self._u[row["concept"]], dtype=float)
            order = np.argsort(-vals if row["direction"] == "chosen" else vals, kind="stable")
            for i in np.asarray(self._u.index)[order]:
                if str(i) not in ids:
                    ids.append(str(i))
                if len(ids) >= self._n_shown:
                    break
        known = set(self._pair_ids)
        return [i for i in ids if i in known][: self._n_shown]

    def _draw_decision(self) -> None:
        d = self._decisions.get(self._selected) if self._selected else None
        self._method.disabled = self._strength.disabled = self._action.value == "allow"
        if d is None:
            self._preview_html.value = "<i>allow: the pairs train as they are.</i>"
            with self._preview_fig.batch_update():
                self._preview_fig.data[0].x = []
        else:
            self._draw_preview(d)
        self._draw_examples(d)

    def _draw_preview(self, d) -> None:
        if self.pairs is None:
            self._preview_html.value = "<i>no pairs given: pass pairs= for the preview.</i>"
            return
        try:
            s = self._preview_of(d)
        except Exception as err:  # a method that cannot compile here says why, in the pane
            self._preview_html.value = f"<span style='color:#b00'>{html.escape(type(err).__name__)}: " \
                                       f"{html.escape(str(err))}</span>"
            return
        lines = [f"<b>{ACTION_LABELS[d.action]} · {html.escape(d.method)} · strength {d.strength:.2f}</b>",
                 f"{s['n_pairs'] - s['n_kept']} of {s['n_pairs']} pairs dropped"
                 + (f": {html.escape(', '.join(s['dropped'][:8]))}{' …' if len(s['dropped']) > 8 else ''}"
                    if s["dropped"] else ""),
                 f"{s['n_offset']} pairs with an offset, {s['n_weight']} with a weight ≠ 1",
                 f"{s['n_masked_tokens']} tokens masked in {s['n_pairs_masked']} pairs"]
        if s["n_hooks"]:
            lines.append(f"{s['n_hooks']} hook(s) on the policy's forward during training")
        if s["n_policy_prompts"]:
            lines.append(f"{s['n_policy_prompts']} pairs with a changed policy prompt")
        self._preview_html.value = "<div>" + "<br>".join(lines) + "</div>"
        vals = []
        if s["offsets"] is not None and s["n_offset"]:
            vals = s["offsets"][s["offsets"] != 0]
        elif s["weights"] is not None and s["n_weight"]:
            vals = s["weights"][s["weights"] != 1]
        with self._preview_fig.batch_update():
            self._preview_fig.data[0].x = np.asarray(vals, dtype=float)

    def _preview_of(self, d) -> dict:
        k = decision_key(d)
        if k not in self._previews:
            iv = _interventions()
            inputs = iv.compile_plan(iv.Plan(decisions=(d,)), self.model, self.pairs, diagnosis=self.diagnosis,
                                     sae=self.sae, directions=self.directions, seed=self.seed)
            s = preview_stats(inputs, self._pair_ids)
            s["masks_by_id"] = ({str(i): m for i, m in zip(inputs.ids, inputs.token_masks)}
                                if inputs.token_masks is not None else {})
            self._previews[k] = s
        return self._previews[k]

    def _draw_examples(self, d) -> None:
        if self.pairs is None or self._selected is None:
            self._examples.value = "<i>no pairs given: pass pairs= to see examples.</i>"
            return
        from .hypotheses import show_examples

        row = self._row(self._selected)
        ids = self._examples_ids(row)
        if not ids:
            self._examples.value = "<i>no example pairs for this row.</i>"
            return
        highlight, note = self._highlight(row), ""
        if d is not None and self.model is not None:
            s = self._previews.get(decision_key(d))
            if s and s["masks_by_id"]:
                highlight, note = self._mask_highlight(ids, s["masks_by_id"]), \
                    "<p><i>marked: the response tokens this decision masks out of the loss.</i></p>"
            if s and s["dropped"]:
                gone = [i for i in ids if i in set(s["dropped"])]
                if gone:
                    note += f"<p><i>dropped by this decision: {html.escape(', '.join(gone))}</i></p>"
        self._examples.value = note + show_examples(self.pairs, ids, highlight=highlight).data

    def _highlight(self, row: dict):
        """The concept's text to mark: its label's top tokens as a regex (navigation only)."""
        import re

        lab = self._labels
        toks = []
        if lab is not None:
            try:
                cid = int(row["concept"])
            except (TypeError, ValueError):
                cid = None
            if cid is not None and cid in lab.index:
                toks = _tokens_of(lab.loc[cid].get("top_tokens", ""))
        toks = [t.strip() for t in toks if len(t.strip()) >= 1]
        if not toks:
            return None
        return re.compile("|".join(re.escape(t) for t in sorted(set(toks), key=len, reverse=True)))

    def _mask_highlight(self, ids, masks_by_id):
        from .models import format_pair

        tok = self.model.tokenizer
        rows = {str(p["id"]): p for p in self.pairs}
        out = {}
        for pid in ids:
            if pid not in masks_by_id or masks_by_id[pid] is None:
                continue
            out[pid] = {}
            for side, mask in zip(("chosen", "rejected"), masks_by_id[pid]):
                if mask is None:
                    continue
                toks = self._tokens.setdefault(pid, {}).get(side)
                if toks is None:
                    enc = format_pair(tok, rows[pid]["prompt"], rows[pid][side])
                    rid = [i for i, m in zip(enc["input_ids"], enc["response_mask"]) if m]
                    toks = [tok.decode([i]) for i in rid]
                    self._tokens[pid][side] = toks
                m = np.asarray(mask)
                n = min(len(toks), len(m))
                out[pid][side] = (toks[:n], (m[:n] == 0).astype(float))
        return out

    def _refresh_plan(self) -> None:
        if not self._decisions:
            self._plan_html.value = "<i>no decisions yet: every concept is allowed.</i>"
            return
        items = []
        for k, d in self._decisions.items():
            row = self._row(k)
            items.append(f"<li>{html.escape(str(row['label'] or row['concept']))} ({html.escape(str(row['scope']))}): "
                         f"<b>{ACTION_LABELS[d.action]}</b> by {html.escape(d.method)}, strength {d.strength:.2f}</li>")
        self._plan_html.value = f"<ol>{''.join(items)}</ol>"


def _row_header() -> str:
    return (f"  {'view':6} {'scope':16} {'label':26} {'dir':3} {'effect':>6} {'[CI]':^15} {'q':>9} "
            f"{'rep':3} n")


def _join(x) -> str:
    if isinstance(x, (list, tuple, np.ndarray)):
        return " · ".join(str(t) for t in x)
    return str(x)


def _tokens_of(x) -> list[str]:
    if isinstance(x, (list, tuple, np.ndarray)):
        return [str(t) for t in x]
    return [t for t in str(x).split(" · ") if t]


def _as_list(pairs) -> list[dict]:
    if isinstance(pairs, pd.DataFrame):
        return pairs.to_dict("records")
    return [dict(p) for p in pairs]
