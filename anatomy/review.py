"""The review step: an inline app in which a person turns ranked hypotheses into a Plan.

``review(diagnosis, *, pairs=None, plan=None) -> ReviewApp`` takes a `Diagnosis`
(`anatomy.diagnose`) and shows, in JupyterLab (ipywidgets; plotly ``FigureWidget`` for
the figures that update):

- the ranked hypotheses, one row per concept (label, view and scope, direction, effect
  with its CI, q, replicated, n), sortable and filterable (significant only; global or
  prompt-conditioned); the arrow keys move through them;
- the selected hypothesis: pairs side by side with the concept's text marked
  (`anatomy.viz.show_examples`), a "more examples" button, the histogram of its u,
  and the member SAE features' labels and top tokens;
- a decision for it: allow / explain away / amplify, a method among those that fit the
  concept's lens and the action (`anatomy.interventions.METHODS`, ``AMPLIFIES``) and a
  strength;
- a live preview of that decision on the data before any training, computed by
  `anatomy.interventions.compile_plan` (what training gets): how many pairs change and by
  how much (histogram of offsets or weights), which pairs are dropped, which tokens of the
  shown examples are masked;
- the plan pane: the decisions so far, ``app.plan`` (a `Plan`), a "save" button that
  writes it as JSON; ``review(diagnosis, plan=Plan.load(path))`` reopens it.

Speed: a decision's preview is compiled once and cached by the decision, so returning to
a setting costs nothing. Offsets, weights and filters are read from the diagnosis's
features (no forward pass); the methods that run the model to compile (``MODEL_METHODS``:
steering offsets, token masks) are previewed on the shown example pairs only.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

ACTION_LABELS = {"allow": "allow", "explain_away": "explain away", "amplify": "amplify"}
SORT_KEYS = {"rank": ("rank", True), "q": ("q", True), "|effect|": ("abs_effect", False), "n": ("n", False)}
ROW_COLUMNS = ("concept", "label", "view", "scope", "group", "direction", "effect", "ci_low", "ci_high", "q",
               "replicated", "n", "rank")
# strength slider per method: (min, max, step, default)
STRENGTH_RANGES = {"filter_pairs": (0.01, 1.0, 0.01, 0.1), "steering": (0.0, 8.0, 0.25, 2.0),
                   "preventative_steering": (0.0, 8.0, 0.25, 2.0)}
DEFAULT_RANGE = (0.0, 3.0, 0.05, 1.0)
# methods whose compilation runs the model over the pairs: previewed on the shown examples
MODEL_METHODS = ("steering", "filter_tokens")


def _interventions():
    from . import interventions

    return interventions


def review(diagnosis, *, pairs=None, plan=None, model=None, sae=None, directions=None,
           q_max: float = 0.05, n_examples: int = 3, save_path: str | Path = "plan.json",
           seed: int = 0) -> ReviewApp:
    """The review app on ``diagnosis``; display it in a notebook (it is a widget).

    diagnosis: a `Diagnosis` (its ``table(top=None)``, ``u``, ``clusters``, ``label_details``,
        ``data_labels``, ``prompt_labels``).
    pairs: the pairs it was computed on (rows with id, prompt, chosen, rejected), for the
        examples and the preview; default the pairs the diagnosis holds in memory.
    plan: a `Plan` to reopen (its decisions fill the rows they name).
    model / sae / directions: passed to `compile_plan` (default the diagnosis's model and SAE);
        only the methods in ``MODEL_METHODS`` and the hook methods need them.
    q_max: "significant only" keeps rows with q <= q_max. n_examples: pairs shown at first.
    save_path: where the "save plan" button writes the plan's JSON.
    """
    return ReviewApp(diagnosis, pairs=pairs, plan=plan, model=model, sae=sae, directions=directions,
                     q_max=q_max, n_examples=n_examples, save_path=save_path, seed=seed)


# ----------------------------------------------------------------------------- rows and decisions


def hypothesis_rows(diagnosis) -> pd.DataFrame:
    """The diagnosis's hypotheses as one table of both views (the table vocabulary), with a
    ``key`` column naming each row uniquely (``"global:all pairs:12"``)."""
    table = diagnosis.table(top=None)
    missing = [c for c in ROW_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the diagnosis table lacks column(s) {missing}")
    table = table.reset_index(drop=True).copy()
    table["key"] = [f"{v}:{s}:{c}" for v, s, c in zip(table["view"], table["scope"], table["concept"])]
    if table["key"].duplicated().any():
        raise ValueError(f"the diagnosis table names row {table.loc[table['key'].duplicated(), 'key'].iloc[0]!r} twice")
    table["abs_effect"] = table["effect"].abs()
    return table


def concept_ref(diagnosis, row: dict):
    """The `ConceptRef` of a table row: the SAE concept cluster ``row["concept"]`` (named by its
    label, with its member features); a diagnosis of another lens says so in ``.lens``."""
    iv = _interventions()
    lens = getattr(diagnosis, "lens", None) or "sae"
    if lens != "sae":
        return iv.ConceptRef(lens=lens, name=str(row["concept"]))
    cid = int(row["concept"])
    clusters = diagnosis.clusters
    members = tuple(int(f) for f in clusters.loc[clusters["cluster"] == cid, "feature"])
    return iv.ConceptRef(lens="sae", name=str(row.get("label") or "") or f"concept {cid}", features=members,
                         cluster=cid)


def methods_for(ref, action: str = "explain_away") -> list[str]:
    """The methods whose lenses include the concept's (`interventions.METHODS`) and that can
    carry out ``action`` (only `interventions.AMPLIFIES` amplify)."""
    iv = _interventions()
    fits = [m for m, lenses in iv.METHODS.items() if ref.lens in lenses]
    if action == "amplify":
        fits = [m for m in fits if m in iv.AMPLIFIES]
    return fits


def scope_of(diagnosis, row: dict, method: str) -> dict | None:
    """A row's scope as a `Decision` takes it: None for all pairs (and for the hook methods,
    which act on whole batches), ``{"prompt_cluster": k}`` for a prompt-conditioned row,
    ``{"ids": [...]}`` (its members) for a data-cluster row."""
    g = row.get("group")
    if g is None or pd.isna(g) or int(g) == -1 or method in _interventions().HOOK_METHODS:
        return None
    if row["view"] == "prompt":
        return {"prompt_cluster": int(g)}
    labels = np.asarray(diagnosis.data_labels)
    return {"ids": [str(i) for i, k in zip(diagnosis.pairs_ids, labels) if int(k) == int(g)]}


def decision_key(decision) -> str:
    """A stable text key of a decision (its dict as sorted JSON), for caching previews."""
    return json.dumps(decision.to_dict(), sort_keys=True)


def _ref_key(ref) -> str:
    return f"{ref.lens}:{ref.cluster}" if ref.lens == "sae" and ref.cluster is not None else f"{ref.lens}:{ref.name}"


def preview_stats(inputs, all_ids) -> dict:
    """What compiled decisions do to the data, from their `TrainInputs`: the pairs dropped
    (weight 0 or left out), the pairs whose offset or weight moved and the values (for the
    histogram), the tokens masked, the hooks and the changed policy prompts."""
    kept = [str(i) for i in inputs.ids]
    w = None if inputs.weights is None else np.asarray(inputs.weights, dtype=float)
    off = None if inputs.offsets is None else np.asarray(inputs.offsets, dtype=float)
    zero = set() if w is None else {i for i, x in zip(kept, w) if x == 0}
    kept_set = set(kept)
    dropped = [str(i) for i in all_ids if str(i) not in kept_set or str(i) in zero]
    masked_tokens = masked_pairs = 0
    masks_by_id = {}
    for pid, masks in zip(kept, inputs.token_masks or ()):
        masks_by_id[pid] = masks
        zeros = sum(int(np.sum(np.asarray(m) == 0)) for m in (masks or ()) if m is not None)
        masked_tokens += zeros
        masked_pairs += zeros > 0
    live = None if w is None else w > 0
    return {"n_pairs": len(all_ids), "dropped": dropped, "offsets": off, "weights": w,
            "n_offset": 0 if off is None else int(np.count_nonzero(off)),
            "n_weight": 0 if w is None else int(np.sum((w != 1) & live)),
            "n_masked_tokens": masked_tokens, "n_pairs_masked": masked_pairs, "masks_by_id": masks_by_id,
            "n_hooks": len(inputs.policy_hooks or ()),
            "n_policy_prompts": sum(p is not None for p in (inputs.policy_prompts or ())),
            "summary": inputs.summary}


# ----------------------------------------------------------------------------- the app


class ReviewApp:
    """The review app (build it with `review`). ``app.widget`` is the ipywidgets tree;
    ``app.plan`` the current `Plan`; ``select(key)``, ``set_decision(...)``, ``save(path)``
    and ``preview()`` drive and read it from code; ``update_times`` holds the seconds each
    control change took to redraw."""

    def __init__(self, diagnosis, *, pairs=None, plan=None, model=None, sae=None, directions=None,
                 q_max=0.05, n_examples=3, save_path="plan.json", seed=0):
        self.diagnosis = diagnosis
        pairs = pairs if pairs is not None else getattr(diagnosis, "pairs", None)
        self.model = model if model is not None else getattr(diagnosis, "model", None)
        self.sae = sae if sae is not None else getattr(diagnosis, "sae", None)
        self.directions, self.seed = directions, seed
        self.q_max = float(q_max)
        self.save_path = Path(save_path)
        self.rows = hypothesis_rows(diagnosis)
        self._by_key = {r["key"]: r for r in self.rows.to_dict("records")}
        self._details = {int(k): v for k, v in (getattr(diagnosis, "label_details", None) or {}).items()}
        self._u = diagnosis.u
        self.pairs = None if pairs is None else _as_list(pairs)
        self._pair_ids = [str(i) for i in diagnosis.pairs_ids]
        if self.pairs is not None and [str(p["id"]) for p in self.pairs] != self._pair_ids:
            raise ValueError(f"pairs= are not the diagnosed pairs ({len(self.pairs)} given, "
                             f"{len(self._pair_ids)} diagnosed, or another order)")
        self._pair_by_id = {} if self.pairs is None else {str(p["id"]): p for p in self.pairs}
        self._decisions: dict[str, object] = {}      # row key -> Decision (rows at "allow" have none)
        self._previews: dict[str, dict] = {}         # decision_key (+ shown ids) -> preview_stats
        self._marks: dict[tuple, dict] = {}          # (concept, pair id) -> token_feature_scores entry
        self._tokens: dict[str, dict] = {}           # pair id -> {side: response tokens}
        self._n_start = self._n_shown = int(n_examples)
        self._selected: str | None = None
        self._busy = False
        self.update_times: list[float] = []
        if plan is not None:
            self._load_plan(plan)
        self._build()
        self._refresh_rows()

    # ----- the plan -----
    @property
    def plan(self):
        """The decisions made so far, in table order, as a `Plan` (rows at "allow" are not in it)."""
        order = {k: i for i, k in enumerate(self.rows["key"])}
        keys = sorted(self._decisions, key=order.__getitem__)
        return _interventions().Plan(decisions=tuple(self._decisions[k] for k in keys))

    def _load_plan(self, plan) -> None:
        by_ref = {}
        for row in self.rows.to_dict("records"):
            ref = concept_ref(self.diagnosis, row)
            for m in methods_for(ref):
                by_ref.setdefault((_ref_key(ref), json.dumps(scope_of(self.diagnosis, row, m), sort_keys=True)),
                                  row["key"])
        for d in plan.decisions:
            k = by_ref.get((_ref_key(d.concept), json.dumps(d.scope, sort_keys=True)))
            if k is None:
                raise ValueError(f"the plan's decision on {d.concept.key!r} (scope {d.scope}) names no row of "
                                 "this diagnosis")
            if k in self._decisions:
                raise ValueError(f"the plan decides row {k!r} twice; the app keeps one decision per row")
            if d.action != "allow":
                self._decisions[k] = d

    def save(self, path: str | Path | None = None) -> Path:
        """Write the plan as JSON (``Plan.save``) to ``path`` or the app's save_path."""
        path = Path(path) if path is not None else self.save_path
        plan = self.plan
        plan.save(path)
        self._status.value = f"saved {len(plan.decisions)} decision(s) to {html.escape(str(path))}"
        return path

    # ----- driving the app from code -----
    def select(self, key: str) -> None:
        """Select the row ``key`` (a value of ``app.rows['key']``), clearing filters that hide it."""
        if key not in self._by_key:
            raise KeyError(f"no row {key!r}")
        if key not in self._visible_keys:
            with self._batch():
                self._filter_sig.value, self._filter_view.value = False, "all"
            self._timed(self._refresh_rows)
        self._row_select.value = key

    def set_decision(self, action: str, method: str | None = None, strength: float | None = None) -> None:
        """Set the selected row's decision as the controls would."""
        if action not in ACTION_LABELS:
            raise ValueError(f"action {action!r} is not one of {tuple(ACTION_LABELS)}")
        with self._batch():
            self._action.value = action
            self._set_methods(concept_ref(self.diagnosis, self._by_key[self._selected]))
            if method is not None:
                if method not in self._method.options:
                    raise ValueError(f"method {method!r} does not fit this concept and action; choose from "
                                     f"{list(self._method.options)}")
                self._method.value = method
            self._set_range(self._method.value)
            if strength is not None:
                self._strength.value = float(strength)
        self._timed(self._on_decision_change)

    def preview(self, key: str | None = None) -> dict | None:
        """The preview of a row's decision (default the selected row; None at "allow")."""
        d = self._decisions.get(key or self._selected)
        return None if d is None else self._preview_of(d)

    # ----- layout -----
    def _build(self) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        self._filter_sig = W.Checkbox(value=False, description=f"significant only (q ≤ {self.q_max:g})",
                                      indent=False)
        self._filter_view = W.ToggleButtons(options=[("all", "all"), ("global", "global"),
                                                     ("prompt-conditioned", "prompt")], value="all")
        self._sort = W.Dropdown(options=list(SORT_KEYS), value="rank", description="sort by",
                                layout=W.Layout(width="180px"))
        self._row_select = W.Select(options=[], rows=14, layout=W.Layout(width="100%"))
        self._row_select.add_class("anatomy-rows")
        self._visible_keys: set = set()
        header = W.HTML("<style>.anatomy-rows select {font-family: monospace; font-size: 12px}</style>"
                        f"<pre style='margin:0; font-size: 12px'>{html.escape(_row_header())}</pre>")
        for w in (self._filter_sig, self._filter_view, self._sort):
            w.observe(lambda ch: self._busy or self._timed(self._refresh_rows), names="value")
        self._row_select.observe(lambda ch: self._busy or self._timed(self._on_select), names="value")

        self._examples = W.HTML()
        self._examples.add_class("anatomy-examples-pane")
        self._more = W.Button(description="more examples", icon="plus")
        self._more.add_class("anatomy-more")
        self._more.on_click(lambda b: self._timed(self._show_more))
        self._mark_sae = W.Checkbox(value=False, description="mark by SAE activation (runs the model)", indent=False)
        self._mark_sae.observe(lambda ch: self._timed(self._draw_examples), names="value")
        self._members = W.HTML()
        self._members.add_class("anatomy-members")
        fig_layout = dict(height=220, width=430, margin=dict(l=40, r=10, t=30, b=30), bargap=0.05)
        self._u_fig = go.FigureWidget(layout={**fig_layout, "title": "u (chosen − rejected)"})
        self._u_fig.add_histogram(x=[], nbinsx=40, name="u")

        self._action = W.ToggleButtons(options=[(v, k) for k, v in ACTION_LABELS.items()], value="allow",
                                       description="decision")
        self._action.add_class("anatomy-action")
        self._method = W.Dropdown(options=[], description="method")
        self._method.add_class("anatomy-method")
        lo, hi, step, default = DEFAULT_RANGE
        self._strength = W.FloatSlider(value=default, min=lo, max=hi, step=step, description="strength",
                                       continuous_update=False, readout_format=".2f")
        self._strength.add_class("anatomy-strength")
        for w in (self._action, self._method, self._strength):
            w.observe(lambda ch: self._busy or self._timed(self._on_decision_change), names="value")

        self._preview_html = W.HTML()
        self._preview_html.add_class("anatomy-preview")
        self._preview_fig = go.FigureWidget(layout={**fig_layout, "title": "preview: offsets / weights that change"})
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
                       self._timing], layout=W.Layout(width="55%"))
        right = W.VBox([self._action, self._method, self._strength, self._preview_html, self._preview_fig,
                        self._u_fig, self._members], layout=W.Layout(width="45%"))
        self.widget = W.VBox([W.HBox([left, right]), W.HTML("<b>examples</b>"), W.HBox([self._more, self._mark_sae]),
                              self._examples])
        self.widget.add_class("anatomy-review")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ----- callbacks -----
    def _timed(self, fn) -> None:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        self.update_times.append(dt)
        self._timing.value = f"<small>last update {dt * 1000:.0f} ms</small>"

    def _batch(self):
        app = self

        class _Quiet:
            def __enter__(self):
                app._busy = True

            def __exit__(self, *exc):
                app._busy = False

        return _Quiet()

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
        opts = [(self._row_text(self._by_key[k]), k) for k in t["key"]]
        self._visible_keys = set(t["key"])
        keep = self._selected if self._selected in self._visible_keys else (opts[0][1] if opts else None)
        with self._batch():
            self._row_select.options = opts
            self._row_select.value = keep
        if keep != self._selected or self._examples.value == "":
            self._on_select()
        self._refresh_plan()

    def _row_text(self, r: dict) -> str:
        d = self._decisions.get(r["key"])
        mark = {"explain_away": "−", "amplify": "+"}.get(getattr(d, "action", "allow"), " ")
        label = str(r["label"] or f"concept {r['concept']}")[:22]
        return (f"{mark}{_short_scope(r)} {label:22} {r['direction'][:3]:3} {r['effect']:+.2f} "
                f"[{r['ci_low']:+.2f},{r['ci_high']:+.2f}] {r['q']:7.1e} {'yes' if bool(r['replicated']) else 'no':3} "
                f"{int(r['n'])}")

    def _on_select(self) -> None:
        key = self._row_select.value
        self._selected = key
        self._n_shown = self._n_start
        if key is None:
            self._examples.value = self._members.value = "<i>no row matches the filters.</i>"
            return
        row = self._by_key[key]
        ref = concept_ref(self.diagnosis, row)
        d = self._decisions.get(key)
        with self._batch():
            self._action.value = d.action if d is not None else "allow"
            self._set_methods(ref)
            if d is not None:
                self._method.value = d.method
            self._set_range(self._method.value)
            if d is not None:
                self._strength.value = float(d.strength)
        self._draw_u(row)
        self._draw_members(ref)
        self._draw_decision()

    def _set_methods(self, ref) -> None:
        """The method dropdown: the methods that fit the concept's lens and the action."""
        opts = methods_for(ref, self._action.value)
        keep = self._method.value if self._method.value in opts else (opts[0] if opts else None)
        if list(self._method.options) != opts:
            self._method.options = opts
        self._method.value = keep

    def _set_range(self, method) -> None:
        lo, hi, step, default = STRENGTH_RANGES.get(method, DEFAULT_RANGE)
        s = self._strength
        if (s.min, s.max, s.step) == (lo, hi, step):
            return
        value = s.value if lo <= s.value <= hi else default
        s.max = max(hi, s.max)
        s.min = min(lo, s.min)
        s.value = value
        s.min, s.max, s.step = lo, hi, step

    def _on_decision_change(self) -> None:
        key = self._selected
        if key is None:
            return
        row = self._by_key[key]
        with self._batch():
            self._set_methods(concept_ref(self.diagnosis, row))
            self._set_range(self._method.value)
        if self._action.value == "allow" or self._method.value is None:
            self._decisions.pop(key, None)
        else:
            m = self._method.value
            self._decisions[key] = _interventions().Decision(
                concept=concept_ref(self.diagnosis, row), action=self._action.value, method=m,
                strength=float(self._strength.value), scope=scope_of(self.diagnosis, row, m))
        self._draw_decision()
        opts = [(self._row_text(self._by_key[k]), k) if k == key else (t, k) for t, k in self._row_select.options]
        with self._batch():
            self._row_select.options = opts
            self._row_select.value = key
        self._refresh_plan()

    def _show_more(self) -> None:
        self._n_shown += 3
        self._draw_decision()

    # ----- drawing -----
    def _draw_u(self, row: dict) -> None:
        col = row["concept"]
        x = np.asarray(self._u[col], dtype=float) if col in self._u.columns else np.array([])
        with self._u_fig.batch_update():
            self._u_fig.data[0].x = x.tolist()
            self._u_fig.layout.title = f"u of {row['label'] or 'concept ' + str(col)} (chosen − rejected)"

    def _draw_members(self, ref) -> None:
        if ref.lens != "sae":
            self._members.value = ""
            return
        det = self._details.get(ref.cluster, {})
        feats = det.get("features", ref.features)
        flabels = det.get("feature_labels", [""] * len(feats))
        parts = [f"<b>concept {ref.cluster}: {len(ref.features)} SAE feature(s)</b>"]
        if det.get("top_tokens"):
            parts.append(f"<div>top tokens: {html.escape(' · '.join(t.strip() for t in _tokens_of(det['top_tokens'])))}"
                         "</div>")
        parts.append("<ul style='margin:2px 0'>" + "".join(
            f"<li>feature {int(f)}{': ' + html.escape(_join(fl)) if fl else ''}</li>"
            for f, fl in zip(feats[:12], list(flabels)[:12])) + "</ul>")
        if len(feats) > 12:
            parts.append(f"<div>… and {len(feats) - 12} more</div>")
        self._members.value = "".join(parts)

    def _shown_ids(self) -> list[str]:
        """The example pairs of the selected row: its ``examples``, then the pairs of its scope
        with the largest u towards its direction."""
        row = self._by_key[self._selected]
        ex = row.get("examples")
        ids = [str(i) for i in ex] if isinstance(ex, (list, tuple, np.ndarray)) else []
        if len(ids) < self._n_shown and row["concept"] in self._u.columns:
            vals = np.asarray(self._u[row["concept"]], dtype=float)
            g = int(row["group"])
            members = np.ones(len(vals), bool) if g == -1 else (
                np.asarray(self.diagnosis.prompt_labels if row["view"] == "prompt" else self.diagnosis.data_labels)
                == g)
            toward = vals if row["direction"] == "chosen" else -vals
            seen = set(ids)
            for i in np.argsort(-toward, kind="stable"):
                if len(ids) >= self._n_shown or toward[i] <= 0:
                    break
                if members[i] and self._pair_ids[i] not in seen:
                    ids.append(self._pair_ids[i])
        return [i for i in ids if i in self._pair_by_id][: self._n_shown]

    def _draw_decision(self) -> None:
        d = self._decisions.get(self._selected) if self._selected else None
        self._method.disabled = self._strength.disabled = self._action.value == "allow"
        s = None
        if d is None:
            self._preview_html.value = "<i>allow: these pairs train as they are.</i>"
            with self._preview_fig.batch_update():
                self._preview_fig.data[0].x = []
        elif self.pairs is None:
            self._preview_html.value = "<i>no pairs given: pass pairs= for the preview.</i>"
        else:
            try:
                s = self._preview_of(d)
                self._draw_preview(d, s)
            except ValueError as err:  # a decision that cannot compile here says why, in the pane
                self._preview_html.value = f"<span style='color:#b00'>cannot compile: {html.escape(str(err))}</span>"
        self._draw_examples(s)

    def _draw_preview(self, d, s: dict) -> None:
        n = s["n_pairs"]
        lines = [f"<b>{ACTION_LABELS[d.action]} · {html.escape(d.method)} · strength {d.strength:.2f}</b>"
                 + (f" <i>(previewed on the {n} shown pairs: this method runs the model)</i>"
                    if d.method in MODEL_METHODS else "")]
        drop = s["dropped"]
        lines.append(f"{len(drop)} of {n} pairs dropped" + (
            f": {html.escape(', '.join(drop[:6]))}{' …' if len(drop) > 6 else ''}" if drop else ""))
        lines.append(f"{s['n_offset']} pairs get an offset, {s['n_weight']} a weight ≠ 1")
        if s["n_masked_tokens"]:
            lines.append(f"{s['n_masked_tokens']} response tokens masked in {s['n_pairs_masked']} pairs")
        if s["n_hooks"]:
            lines.append(f"{s['n_hooks']} hook(s) on the policy's forward during training (the data is unchanged)")
        if s["n_policy_prompts"]:
            lines.append(f"{s['n_policy_prompts']} pairs train with a changed policy prompt")
        self._preview_html.value = "<div>" + "<br>".join(lines) + "</div>"
        vals, what = np.array([]), "offsets / weights that change"
        if s["n_offset"]:
            vals, what = s["offsets"][s["offsets"] != 0], f"offsets of {s['n_offset']} pairs"
        elif s["n_weight"]:
            w = s["weights"]
            vals, what = w[(w != 1) & (w > 0)], f"weights of {s['n_weight']} pairs"
        with self._preview_fig.batch_update():
            self._preview_fig.data[0].x = np.asarray(vals, dtype=float).tolist()
            self._preview_fig.layout.title = f"preview: {what}"

    def _preview_of(self, d) -> dict:
        if d.method in MODEL_METHODS:
            ids = self._shown_ids()
            k = decision_key(d) + "|" + ",".join(ids)
        else:
            ids, k = self._pair_ids, decision_key(d)
        if k not in self._previews:
            iv = _interventions()
            inputs = iv.compile_plan(iv.Plan(decisions=(d,)), self.model, [self._pair_by_id[i] for i in ids],
                                     diagnosis=self.diagnosis, sae=self.sae, directions=self.directions,
                                     seed=self.seed)
            self._previews[k] = preview_stats(inputs, ids)
        return self._previews[k]

    def _draw_examples(self, s: dict | None = None) -> None:
        if self.pairs is None or self._selected is None:
            self._examples.value = "<i>no pairs given: pass pairs= to see examples.</i>"
            return
        from .viz import show_examples

        row = self._by_key[self._selected]
        ids = self._shown_ids()
        if not ids:
            self._examples.value = "<i>no example pairs for this row.</i>"
            return
        notes = []
        if s and s["masks_by_id"] and any(i in s["masks_by_id"] for i in ids) and self.model is not None:
            highlight = self._mask_highlight(ids, s["masks_by_id"])
            notes.append("marked: the response tokens this decision masks out of the loss")
        elif self._mark_sae.value and self.model is not None and self.sae is not None:
            highlight = self._sae_highlight(row, ids)
            notes.append("marked: tokens where the concept's SAE features fire (shaded by activation)")
        else:
            highlight = self._token_regex(row)
            if highlight is not None:
                notes.append("marked: the concept's top tokens")
        if s and s["dropped"]:
            gone = [i for i in ids if i in set(s["dropped"])]
            if gone:
                notes.append(f"dropped by this decision: {', '.join(gone)}")
        head = "".join(f"<p style='margin:2px 0'><i>{html.escape(n)}</i></p>" for n in notes)
        self._examples.value = head + show_examples([self._pair_by_id[i] for i in ids], ids, highlight=highlight).data

    def _token_regex(self, row: dict):
        toks = self._details.get(int(row["concept"]), {}).get("top_tokens", []) if getattr(
            self.diagnosis, "lens", "sae") in (None, "sae") else []
        toks = sorted({t.strip() for t in _tokens_of(toks) if len(t.strip()) >= 2}, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in toks)) if toks else None

    def _sae_highlight(self, row: dict, ids: list[str]) -> dict:
        from .hypotheses import token_feature_scores

        c = int(row["concept"])
        todo = [i for i in ids if (c, i) not in self._marks]
        if todo:
            feats = [int(f) for f in self.diagnosis.clusters.loc[self.diagnosis.clusters["cluster"] == c, "feature"]]
            got = token_feature_scores(self.model, self.sae, [self._pair_by_id[i] for i in todo], feats)
            self._marks.update({(c, i): v for i, v in got.items()})
        return {i: self._marks[(c, i)] for i in ids if (c, i) in self._marks}

    def _mask_highlight(self, ids, masks_by_id) -> dict:
        from .models import format_pair

        tok = self.model.tokenizer
        out = {}
        for pid in ids:
            masks = masks_by_id.get(pid)
            if not masks:
                continue
            out[pid] = {}
            for side, mask in zip(("chosen", "rejected"), masks):
                if mask is None:
                    continue
                toks = self._tokens.setdefault(pid, {}).get(side)
                if toks is None:
                    p = self._pair_by_id[pid]
                    enc = format_pair(tok, p["prompt"], p[side])
                    toks = [tok.decode([i]) for i, m in zip(enc["input_ids"], enc["response_mask"]) if m]
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
        for d in self.plan.decisions:
            row = next(self._by_key[k] for k, x in self._decisions.items() if x is d)
            items.append(f"<li>{html.escape(str(row['label'] or 'concept ' + str(row['concept'])))} "
                         f"({html.escape(str(row['scope']))}): <b>{ACTION_LABELS[d.action]}</b> by "
                         f"{html.escape(d.method)}, strength {d.strength:.2f}</li>")
        self._plan_html.value = f"<ol style='margin:2px 0'>{''.join(items)}</ol>"


def _short_scope(r: dict) -> str:
    """"G all", "G data 3", "P prompt 0": the view's initial and the scope, 10 characters."""
    scope = str(r["scope"]).replace(" cluster", "").replace("all pairs", "all")
    return f"{str(r['view'])[:1].upper()} {scope[:8]:8}"


def _row_header() -> str:
    return f" {'scope':10} {'label':22} {'dir':3} {'effect':>5} {'[95% CI]':^13} {'q':>7} {'rep':3} n"


def _join(x) -> str:
    return " · ".join(str(t) for t in x) if isinstance(x, (list, tuple, np.ndarray)) else str(x)


def _tokens_of(x) -> list[str]:
    """The token texts of ``top_tokens``: ``(token, enrichment)`` pairs (lists once read back from JSON),
    plain strings, or one " · "-joined string."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [str(t[0]) if isinstance(t, (list, tuple)) and len(t) else str(t) for t in x]
    return [t for t in str(x).split(" · ") if t]


def _as_list(pairs) -> list[dict]:
    if isinstance(pairs, pd.DataFrame):
        return pairs.to_dict("records")
    return [dict(p) for p in pairs]
