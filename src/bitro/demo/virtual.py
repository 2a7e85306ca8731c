"""Feature-level virtual cohorts with planted effects, for the accuracy benchmark (``make accuracy``).

The embedded demo renders slides, segments them and embeds every cell: faithful to the pipeline, but at
a few minutes per section it cannot reach the cohort sizes that separate one model from another within
a benchmark budget on a CPU. This generator starts one step later, where the model starts: it draws each
cell's type, position and feature vector (the 128-d input of BiTro after PCA), its expected expression,
and the counts of spots or slides, with the effects below *planted before any model runs*, each tagged
on its genes (:attr:`VirtualCohort.effect_of_gene`) so that accuracy can be reported per effect.

Tissue
    A section is a grid of spots (55 µm discs at 100 µm pitch, as Visium) over smooth random fields of
    tumour fraction and immune infiltration, so neighbouring spots look alike. A bulk slide is a grid of
    55 µm patches the same way, summed into one profile. Each unit holds a Poisson number of cells
    (mean ``cells_per_unit`` times a per-unit density factor) on a jittered hexagonal lattice.

Bulk slides differ in composition, as tumours do
    ST sections use rank-normalised fields, so every section holds nearly the same mix of cells (the
    cohort the ST benchmark was first run on, kept as it was). A bulk patient instead draws its own
    *tumour purity* (cellularity; Beta(4, 3.3): median about 0.55, 5-95 % 0.25-0.82 of the field, as
    pathologists' cellularity estimates in carcinomas spread over 20-90 %) and *immune infiltration*
    (log-normal, median 0.3, sd 0.7 on the log scale: most tumours lightly infiltrated, a tail of
    lymphocyte-predominant ones, as stromal TIL scores are skewed). The slide's fields are smooth
    standardised noise around those levels (:func:`_slide_fields`), so slides differ in composition
    between patients (tumour cells about 30-65 % of a slide's cells, 5-95 %, lymphocytes 5-24 %) and
    the mean embedding of a slide carries that signal.

Arrangement, drawn independently of composition
    Each unit is *mixed* (types assigned to positions at random) or *segregated* (tumour cells packed on
    one side of a random line, the other types on the other side). The same mix of types thus comes with
    many tumour–stroma contacts or few, and a model that sees only the unit's mean embedding (which
    depends on composition alone) cannot tell them apart. Bulk slides differ in how often their patches
    are segregated (``segregation`` drawn per slide), so slide-level architecture varies apart from
    slide-level composition.

Cell features
    A latent vector per cell: its type's centre, within-type state noise, a nuclear-size component and a
    per-section batch shift (stain and scanner), mapped to 128 dimensions by a fixed random matrix with
    decaying column scales (as PCA components decay), plus isotropic noise. Types overlap: a linear
    classifier recovers them from one cell's features at well below 100 % (``type_separation``). A
    cell's features carry *nothing* of its neighbours or its programme activity: what depends on
    arrangement can only be read from the other cells of the unit.

Expression (expected molecules per cell)
    ``type profile × size factor × exp(programmes)``, the profiles from :mod:`bitro.demo.expression`.
    The programmes are the planted effects:

    (a) ``composition`` - cell-type markers (the profiles themselves): what any model can learn from
        the mix of cells, and what the composition oracle knows exactly.
    (b) ``neighbourhood`` - a cytotoxic activation programme in lymphocytes that rises with the share of
        tumour cells among their ``k_neighbours`` nearest neighbours (T cells engaging tumour), and an
        EMT programme in tumour cells that rises with the share of fibroblasts among theirs (tumour
        cells at a stromal border undergoing epithelial-mesenchymal transition).
    (c) ``position`` - a hypoxia programme in tumour cells that rises with depth into a nest: the
        distance to the nearest non-tumour cell of the unit, or, in a unit that is all tumour, the
        nest depth of the section's tumour field.
    (d) ``slide`` - slide-level architecture: an interferon-response programme in every tumour cell
        of a slide, set by the slide's fraction of tumour cells touching an immune cell (interferon-γ
        from engaged T cells diffuses and induces PD-L1 and MHC-II far from any contact). It varies
        between slides, hence matters for bulk. There it saturates: ``tanh((contact - 0.45) / 0.25)``
        times ``slide_effect``, about four-fold between the cohort's 5th and 95th contact percentiles.
        Contact depends on composition (more immune cells, more contact: about three quarters of its
        variance between slides) and on arrangement (how often the slide's patches are segregated):
        the rest. It is an average over the slide of a cell's local state, so a model that sees each
        patch and pools the slide may already read it; a slide-level context is not required by it.
    ``patient`` - hormone-receptor genes with a per-patient level no image shows (a ceiling below 1).
    Everything else is ``other``.

Measurement
    Each cell's molecules are gamma-distributed around its expectation (shape ``cell_dispersion``:
    cell-to-cell biological noise); an ST spot captures a Poisson draw of their sum at a per-section
    capture efficiency (mean ``umi_per_spot`` UMIs, times a log-normal section factor), so the per-gene
    PCC ceiling is well below 1 from counting noise alone. A bulk slide's RNA comes from a neighbouring
    piece of the tumour: its profile is the slide's summed expectation times per-gene log-normal
    sampling noise (``bulk_sampling_sd``), in TPM. The piece also differs in make-up: each cell
    type's share is scaled by a log-normal factor (``bulk_piece_sd``, the regional heterogeneity of a
    tumour), so a slide's true composition does not fix its bulk profile: per-gene PCC ceilings across
    the 120 patients of the benchmark are about 0.68 (composition genes), 0.64 (neighbourhood), 0.81
    (position), 0.91 (slide), 0.95 (patient) and 0.29 (the rest, which vary little).

The effect sizes are fixed in :class:`VirtualConfig` before any model is run, at values of the order
reported for such programmes (two- to four-fold changes across the range of the driver), not tuned to
make one model win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from bitro.demo.expression import (
    CYTOTOXIC,
    HYPOXIA,
    MARKERS,
    PATIENT_GENES,
    build_expression_model,
    gene_symbols,
    tpm,
)
from bitro.demo.morphology import CELL_TYPES, FIBROBLAST, LYMPHOCYTE, MACROPHAGE, TUMOUR

#: Effects planted by the generator, in the order tables report them.
EFFECTS: tuple[str, ...] = ("composition", "neighbourhood", "position", "slide", "patient", "other")
#: EMT programme of tumour cells at a stromal border (an effect of kind (b)).
EMT: tuple[str, ...] = ("VIM", "S100A4", "MMP9", "TIMP1")
#: Interferon response of tumour cells, set by the whole slide's tumour–immune contact (kind (d)).
INTERFERON: tuple[str, ...] = ("CD274", "CXCL13", "HLA-DRA", "CD74")
IMMUNE = (LYMPHOCYTE, MACROPHAGE)


@dataclass(frozen=True)
class VirtualConfig:
    """Sizes, feature model and effect sizes of a virtual cohort (module docstring).

    Attributes
    ----------
    seed
        Master seed; the same seed gives identical cohorts.
    n_genes
        Genes simulated (the demo's symbol list; every programme gene is within the first 130).
    feature_dim, latent_dim
        Width of the cell features (the model's input) and of the latent cell state.
    type_separation
        Distance scale of the type centres in latent space; at 0.45 against state noise 0.6, a logistic
        regression on one cell's features recovers its type for about 89 % of cells.
    state_sd, batch_sd, feature_noise_sd
        Within-type state noise (latent), per-section shift (latent) and isotropic noise (features).
    unit_diameter_um, unit_pitch_um
        Spot or patch diameter and the grid pitch.
    cells_per_unit
        Mean cells per unit.
    k_neighbours
        Neighbours that define a cell's micro-environment for effect (b).
    neighbourhood_effect, position_effect, slide_effect
        Log-fold change of programmes (b), (c), (d) over the range of their driver.
    patient_sd
        Standard deviation of per-patient log-fold levels of the patient genes.
    cell_dispersion
        Gamma shape of per-cell molecules around their expectation.
    umi_per_spot, capture_sd
        Mean UMIs of a spot and the log-normal spread of capture efficiency between sections.
    bulk_sampling_sd
        Per-gene log-normal noise between a slide and the piece its bulk RNA came from.
    bulk_piece_sd
        Log-normal spread of each cell type's share between the slide and that piece.
    purity_beta, infiltration_median, infiltration_sd
        A bulk patient's tumour purity (Beta parameters) and immune infiltration (log-normal median and
        sd of its logarithm), the levels of its slide's fields.
    contact_centre, contact_scale
        Bulk: the slide effect is ``slide_effect · tanh((contact − centre) / scale)``.
    """

    seed: int = 0
    n_genes: int = 130
    feature_dim: int = 128
    latent_dim: int = 16
    type_separation: float = 0.45
    state_sd: float = 0.6
    batch_sd: float = 0.25
    feature_noise_sd: float = 0.3
    unit_diameter_um: float = 55.0
    unit_pitch_um: float = 100.0
    cells_per_unit: float = 20.0
    k_neighbours: int = 6
    neighbourhood_effect: float = 1.4
    position_effect: float = 1.1
    slide_effect: float = 1.0
    patient_sd: float = 0.6
    cell_dispersion: float = 4.0
    umi_per_spot: float = 3000.0
    capture_sd: float = 0.3
    bulk_sampling_sd: float = 0.15
    bulk_piece_sd: float = 0.25
    cell_library: float = 450.0
    purity_beta: tuple[float, float] = (4.0, 3.3)
    infiltration_median: float = 0.3
    infiltration_sd: float = 0.7
    contact_centre: float = 0.45
    contact_scale: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VirtualUnitSet:
    """One section (ST) or slide (bulk): its cells, units and measured expression.

    Cell arrays are grouped by unit (``cell_offsets``); unit arrays follow ``unit_xy_um``.
    """

    sample_id: str
    patient_id: str
    level: str
    features: np.ndarray  # (n_cells, feature_dim) float32
    cell_type: np.ndarray  # (n_cells,) int8 codes into CELL_TYPES
    cell_xy_um: np.ndarray  # (n_cells, 2) slide coordinates
    cell_offsets: np.ndarray  # (n_units + 1,) int64
    unit_xy_um: np.ndarray  # (n_units, 2)
    segregated: np.ndarray  # (n_units,) bool
    counts: np.ndarray  # ST: (n_units, G) UMIs; bulk: (1, G) TPM
    expected: np.ndarray  # the noiseless expectation in the same shape (per unit or slide, molecules)
    contact_fraction: float  # tumour cells touching an immune cell, over the whole sample

    @property
    def n_units(self) -> int:
        return len(self.unit_xy_um)

    def composition(self) -> np.ndarray:
        """(n_units, n_types) fraction of each cell type per unit (the oracle's input)."""
        sizes = np.diff(self.cell_offsets)
        unit = np.repeat(np.arange(self.n_units), sizes)
        out = np.zeros((self.n_units, len(CELL_TYPES)))
        np.add.at(out, (unit, self.cell_type.astype(np.int64)), 1.0)
        return out / np.maximum(sizes, 1)[:, None]


@dataclass
class VirtualCohort:
    """A virtual cohort: its samples, genes and which effect each gene carries."""

    level: str
    samples: list[VirtualUnitSet]
    genes: list[str]
    effect_of_gene: dict[str, str]
    config: VirtualConfig
    info: dict[str, Any] = field(default_factory=dict)

    def genes_of(self, effect: str) -> list[str]:
        return [g for g in self.genes if self.effect_of_gene[g] == effect]


def gene_effects(genes: list[str]) -> dict[str, str]:
    """The planted effect each gene carries (module docstring); markers of any type are ``composition``."""
    groups = {
        "neighbourhood": set(CYTOTOXIC) | set(EMT),
        "position": set(HYPOXIA),
        "slide": set(INTERFERON),
        "patient": set(PATIENT_GENES),
        "composition": {g for markers in MARKERS.values() for g in markers},
    }
    out = {}
    for gene in genes:
        out[gene] = next((effect for effect, members in groups.items() if gene in members), "other")
    return out


class _World:
    """What every sample of a cohort shares: the feature map, type centres and expression profiles."""

    def __init__(self, config: VirtualConfig, rng: np.random.Generator) -> None:
        self.config = config
        c = config
        self.centres = rng.normal(0.0, c.type_separation, (len(CELL_TYPES), c.latent_dim))
        self.size_axis = rng.normal(0.0, 1.0, c.latent_dim) / np.sqrt(c.latent_dim)
        scales = 1.0 / np.sqrt(1.0 + np.arange(c.latent_dim))  # decaying, as PCA components do
        basis, _ = np.linalg.qr(rng.normal(size=(c.feature_dim, c.latent_dim)))
        self.projection = (basis * scales).T * np.sqrt(c.latent_dim)  # (latent, feature)
        self.model = build_expression_model(rng, c.n_genes, c.cell_library)
        self.genes = gene_symbols(c.n_genes)
        index = {g: i for i, g in enumerate(self.genes)}
        self.programme = {
            name: np.array([index[g] for g in genes if g in index], dtype=np.int64)
            for name, genes in (
                ("cytotoxic", CYTOTOXIC),
                ("emt", EMT),
                ("hypoxia", HYPOXIA),
                ("interferon", INTERFERON),
                ("patient", PATIENT_GENES),
            )
        }
        # Programme genes sit low in every type but the one they act in, so the programme dominates them.
        profiles = self.model.profiles.copy()
        for name, acting in (("cytotoxic", LYMPHOCYTE), ("emt", TUMOUR), ("hypoxia", TUMOUR)):
            genes_ = self.programme[name]
            others = [t for t in range(len(CELL_TYPES)) if t != acting]
            profiles[np.ix_(others, genes_)] *= 0.25
        profiles[:, self.programme["interferon"]] *= 0.5
        profiles[TUMOUR, self.programme["interferon"]] *= 6.0
        self.profiles = profiles


def _fields(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A smooth random field in [0, 1] over a grid (Gaussian-filtered noise, rank-normalised).

    Rank normalisation gives every section the same distribution of values: the ST cohort's fields.
    """
    noise = ndimage.gaussian_filter(rng.normal(size=shape), scale, mode="wrap")
    ranks = noise.ravel().argsort().argsort().reshape(shape)
    return (ranks + 0.5) / ranks.size


def _standard_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian noise over a grid, standardised to mean 0 and sd 1 within the grid.

    The bulk slides' fields: the spatial pattern is standardised, the level comes from the patient
    (:func:`_slide_fields`), so slides differ in composition as tumours do.
    """
    noise = ndimage.gaussian_filter(rng.normal(size=shape), scale, mode="wrap")
    return (noise - noise.mean()) / max(float(noise.std()), 1e-12)


def _slide_fields(
    rng: np.random.Generator, shape: tuple[int, int], patient: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Tumour and immune fields of a bulk slide around the patient's purity and infiltration.

    Tumour: ``logistic(logit(purity) + 1.5 z)``; immune: ``infiltration × exp(0.6 z')``, clipped to [0, 1];
    ``z``, ``z'`` smooth standardised noise (:func:`_standard_field`, the same scales as the ST fields).
    """
    z_tumour = _standard_field(rng, shape, 2.0)
    z_immune = _standard_field(rng, shape, 1.5)
    purity = float(np.clip(patient["purity"], 1e-3, 1 - 1e-3))
    tumour = 1.0 / (1.0 + np.exp(-(np.log(purity / (1.0 - purity)) + 1.5 * z_tumour)))
    immune = np.clip(patient["infiltration"] * np.exp(0.6 * z_immune), 0.0, 1.0)
    return tumour, immune


def _unit_cells(
    rng: np.random.Generator, n: int, radius: float, fractions: np.ndarray, segregated: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (relative to the unit centre) and types of ``n`` cells of one unit."""
    spacing = radius * np.sqrt(np.pi / max(n, 1)) * 1.05
    side = int(np.ceil(2 * radius / spacing)) + 2
    gx, gy = np.meshgrid(np.arange(-side, side + 1), np.arange(-side, side + 1))
    lattice = np.column_stack([(gx + 0.5 * (gy % 2)).ravel(), (gy * np.sqrt(3) / 2).ravel()]) * spacing
    inside = lattice[np.hypot(*lattice.T) <= radius]
    if len(inside) < n:
        inside = rng.uniform(-radius, radius, size=(n, 2)) / np.sqrt(2)
    xy = inside[rng.choice(len(inside), n, replace=False)] + rng.normal(0, 0.15 * spacing, (n, 2))
    counts = rng.multinomial(n, fractions)
    types = np.repeat(np.arange(len(fractions)), counts)
    if segregated:
        direction = rng.normal(size=2)
        order = np.argsort(xy @ direction)
        # Tumour first along the line, then the rest in a random order of types: one border.
        rest = [t for t in rng.permutation(len(fractions)) if t != TUMOUR]
        ordered = np.repeat([TUMOUR, *rest], counts[[TUMOUR, *rest]])
        types = np.empty(n, dtype=np.int64)
        types[order] = ordered
    else:
        types = rng.permutation(types)
    return xy, types.astype(np.int8)


def _composition(tumour: float, immune: float) -> np.ndarray:
    """Expected type fractions of a unit from the local tumour and immune fields."""
    stroma = 1.0 - tumour
    weights = np.array(
        [
            0.05 + 0.9 * tumour,  # tumour
            0.02 + 0.45 * immune * (0.4 + stroma),  # lymphocyte
            0.05 + 0.55 * stroma,  # fibroblast
            0.01 + 0.15 * immune,  # macrophage
            0.02 + 0.06 * stroma,  # endothelium
            0.01 + 0.08 * stroma * (1 - immune),  # normal epithelium
        ]
    )
    return weights / weights.sum()


def _neighbour_shares(xy: np.ndarray, types: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """(n_cells, n_types) share of each type among each cell's ``k`` nearest neighbours in its unit."""
    shares = np.zeros((len(types), len(CELL_TYPES)))
    for u in range(len(offsets) - 1):
        lo, hi = offsets[u], offsets[u + 1]
        if hi - lo < 2:
            continue
        kk = min(k, hi - lo - 1)
        _, idx = cKDTree(xy[lo:hi]).query(xy[lo:hi], kk + 1)
        neighbour_types = types[lo:hi][idx[:, 1:]]
        for t in range(len(CELL_TYPES)):
            shares[lo:hi, t] = (neighbour_types == t).mean(axis=1)
    return shares


def _tumour_depth(
    xy: np.ndarray, types: np.ndarray, offsets: np.ndarray, nest_depth: np.ndarray
) -> np.ndarray:
    """Each tumour cell's distance (µm) to the nearest non-tumour cell of its unit (module docstring)."""
    depth = np.zeros(len(types))
    for u in range(len(offsets) - 1):
        lo, hi = offsets[u], offsets[u + 1]
        tumour = types[lo:hi] == TUMOUR
        if not tumour.any():
            continue
        if tumour.all():
            depth[lo:hi] = nest_depth[u]
            continue
        distance, _ = cKDTree(xy[lo:hi][~tumour]).query(xy[lo:hi][tumour])
        depth[lo:hi][tumour] = distance
    return depth


def _sample(
    world: _World,
    rng: np.random.Generator,
    *,
    sample_id: str,
    patient_id: str,
    level: str,
    grid: tuple[int, int],
    patient: dict[str, Any],
    segregation: float,
) -> VirtualUnitSet:
    c = world.config
    rows, cols = grid
    if "purity" in patient:  # a bulk patient (_bulk_patient): its own composition
        tumour_field, immune_field = _slide_fields(rng, grid, patient)
    else:  # an ST patient: rank-normalised fields, shifted a little per patient
        tumour_field = np.clip(_fields(rng, grid, 2.0) * 1.1 + patient["tumour_shift"], 0.0, 1.0)
        immune_field = np.clip(_fields(rng, grid, 1.5) * patient["immune_level"], 0.0, 1.0)
    depth_field = ndimage.distance_transform_edt(tumour_field > 0.6) * c.unit_pitch_um
    density = np.exp(rng.normal(0.0, 0.25, grid)) * (0.8 + 0.4 * tumour_field)
    units_xy, all_xy, all_types, sizes, segregated, nest = [], [], [], [], [], []
    for r in range(rows):
        for q in range(cols):
            n = max(1, int(rng.poisson(c.cells_per_unit * density[r, q])))
            fractions = _composition(tumour_field[r, q], immune_field[r, q])
            fractions = rng.dirichlet(fractions * 30.0)
            seg = bool(rng.random() < segregation)
            xy, types = _unit_cells(rng, n, c.unit_diameter_um / 2, fractions, seg)
            centre = np.array([q, r], dtype=np.float64) * c.unit_pitch_um + c.unit_pitch_um
            units_xy.append(centre)
            all_xy.append(xy + centre)
            all_types.append(types)
            sizes.append(n)
            segregated.append(seg)
            nest.append(depth_field[r, q] + c.unit_diameter_um / 2)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    xy = np.concatenate(all_xy)
    types = np.concatenate(all_types).astype(np.int8)
    t = types.astype(np.int64)
    n_cells = len(types)

    # Cell features: type centre + state + size + section shift, projected, plus isotropic noise.
    log_size = rng.normal(0.0, 0.25, n_cells)
    latent = world.centres[t] + rng.normal(0.0, c.state_sd, (n_cells, c.latent_dim))
    latent += np.outer(log_size, world.size_axis) * 4.0 + rng.normal(0.0, c.batch_sd, c.latent_dim)
    features = latent @ world.projection + rng.normal(0.0, c.feature_noise_sd, (n_cells, c.feature_dim))

    # Expected molecules per cell with the planted programmes.
    shares = _neighbour_shares(xy, types, offsets, c.k_neighbours)
    depth = _tumour_depth(xy, types, offsets, np.asarray(nest))
    immune_contact = shares[:, list(IMMUNE)].sum(axis=1) > 0
    tumour = t == TUMOUR
    contact_fraction = float(immune_contact[tumour].mean()) if tumour.any() else 0.0
    mu = world.profiles[t] * np.exp(log_size)[:, None]
    log_fold = np.zeros_like(mu)
    log_fold[:, world.programme["cytotoxic"]] += (
        c.neighbourhood_effect * 2.0 * shares[:, TUMOUR] * (t == LYMPHOCYTE)
    )[:, None]
    log_fold[:, world.programme["emt"]] += (c.neighbourhood_effect * 2.0 * shares[:, FIBROBLAST] * tumour)[
        :, None
    ]
    log_fold[:, world.programme["hypoxia"]] += (c.position_effect * np.clip(depth / 40.0, 0.0, 2.0) * tumour)[
        :, None
    ]
    if level == "bulk":  # saturating: about four-fold between the low and high ends of the cohort
        slide_level = float(np.tanh((contact_fraction - c.contact_centre) / c.contact_scale))
    else:  # ST sections (unchanged): a shift of the whole section
        slide_level = (contact_fraction - 0.35) / 0.2
    log_fold[:, world.programme["interferon"]] += (c.slide_effect * slide_level * tumour)[:, None]
    log_fold[:, world.programme["patient"]] += patient["hormone"][None, :] * tumour[:, None]
    mu *= np.exp(log_fold)
    molecules = rng.gamma(c.cell_dispersion, mu / c.cell_dispersion)

    unit = np.repeat(np.arange(len(sizes)), sizes)
    per_unit_expected = np.zeros((len(sizes), mu.shape[1]))
    per_unit = np.zeros_like(per_unit_expected)
    np.add.at(per_unit_expected, unit, mu)
    np.add.at(per_unit, unit, molecules)
    if level == "bulk":
        expected = per_unit_expected.sum(axis=0, keepdims=True)
        # The RNA comes from a neighbouring piece: each cell type a little more or less abundant there,
        # then per-gene noise (library preparation, sampling).
        by_type = np.zeros((len(CELL_TYPES), mu.shape[1]))
        np.add.at(by_type, t, mu)
        piece = np.exp(rng.normal(0.0, c.bulk_piece_sd, len(CELL_TYPES)))
        drawn = (piece @ by_type)[None, :] * np.exp(rng.normal(0.0, c.bulk_sampling_sd, expected.shape))
        counts = tpm(drawn.T, world.model.lengths).T
    else:
        capture = c.umi_per_spot / per_unit_expected.sum(axis=1).mean()
        capture *= np.exp(rng.normal(0.0, c.capture_sd))
        counts = rng.poisson(per_unit * capture).astype(np.float64)
        expected = per_unit_expected * capture
    return VirtualUnitSet(
        sample_id=sample_id,
        patient_id=patient_id,
        level=level,
        features=features.astype(np.float32),
        cell_type=types,
        cell_xy_um=xy,
        cell_offsets=offsets,
        unit_xy_um=np.array(units_xy),
        segregated=np.array(segregated),
        counts=counts,
        expected=expected,
        contact_fraction=contact_fraction,
    )


def _patient(world: _World, rng: np.random.Generator) -> dict[str, Any]:
    """An ST patient: small shifts of rank-normalised fields (the ST cohort as first generated)."""
    return {
        "tumour_shift": rng.normal(0.0, 0.12),
        "immune_level": float(np.exp(rng.normal(0.0, 0.35))),
        "hormone": rng.normal(0.0, world.config.patient_sd, len(world.programme["patient"])),
    }


def _bulk_patient(world: _World, rng: np.random.Generator) -> dict[str, Any]:
    """A bulk patient: tumour purity and immune infiltration of its own (module docstring, Bulk slides)."""
    c = world.config
    return {
        "purity": float(rng.beta(*c.purity_beta)),
        "infiltration": float(min(1.0, np.exp(rng.normal(np.log(c.infiltration_median), c.infiltration_sd)))),
        "hormone": rng.normal(0.0, c.patient_sd, len(world.programme["patient"])),
    }


def st_cohort(
    config: VirtualConfig | None = None,
    *,
    n_patients: int = 6,
    sections_per_patient: int = 2,
    grid: tuple[int, int] = (18, 18),
) -> VirtualCohort:
    """Spatial sections (``VSTpp_s``), ``sections_per_patient`` per patient, ``grid`` spots each.

    Half the units of a section are segregated (arrangement independent of composition).
    """
    config = config or VirtualConfig()
    rng = np.random.default_rng([config.seed, 1])
    world = _World(config, rng)
    samples = []
    for p in range(n_patients):
        patient = _patient(world, rng)
        for s in range(sections_per_patient):
            samples.append(
                _sample(
                    world,
                    rng,
                    sample_id=f"VST{p + 1:02d}_{s + 1}",
                    patient_id=f"P{p + 1:02d}",
                    level="st",
                    grid=grid,
                    patient=patient,
                    segregation=0.5,
                )
            )
    return VirtualCohort("st", samples, world.genes, gene_effects(world.genes), config)


def bulk_cohort(
    config: VirtualConfig | None = None, *, n_patients: int = 120, grid: tuple[int, int] = (10, 10)
) -> VirtualCohort:
    """Bulk slides (``VBULK###``), one per patient, ``grid`` patches each, in TPM.

    Each patient draws its tumour purity and immune infiltration (:func:`_bulk_patient`), and each
    slide how often its patches are segregated (uniform in 0.1–0.9), so its tumour–immune contact,
    which drives effect (d), varies with its composition and apart from it.
    """
    config = config or VirtualConfig()
    rng = np.random.default_rng([config.seed, 2])
    world = _World(config, np.random.default_rng([config.seed, 1]))
    samples = []
    for p in range(n_patients):
        patient = _bulk_patient(world, rng)
        samples.append(
            _sample(
                world,
                rng,
                sample_id=f"VBULK{p + 1:03d}",
                patient_id=f"P{p + 1:03d}",
                level="bulk",
                grid=grid,
                patient=patient,
                segregation=float(rng.uniform(0.1, 0.9)),
            )
        )
    return VirtualCohort("bulk", samples, world.genes, gene_effects(world.genes), config)
