"""Face detection for photos that are not pre-aligned face crops (``predict --detect_faces``).

OpenCV's frontal-face Haar cascade finds the faces; the largest is cropped as a square
enlarged by a margin (a fraction of its side, on every side) and shifted or clipped to
stay inside the photo. OpenCV is optional: only ``FaceDetector()`` imports it, and says
how to install it when it is missing.
"""

from __future__ import annotations

import numpy as np


class FaceDetector:
  """OpenCV's frontal-face Haar cascade; returns the largest face's (x, y, w, h).

  Photos are searched at most ``max_side`` pixels wide/high, for faces of at least
  ``min_frac`` of the shorter side (smaller values find smaller faces, more slowly).
  Needs OpenCV 4 (OpenCV 5 moved the cascade classifier out of the main package).
  """

  def __init__(self, max_side: int = 640, min_frac: float = 0.1):
    try:
      import cv2
    except ImportError as e:
      raise ImportError("--detect_faces needs OpenCV 4: pip install 'opencv-python-headless<5'"
                        ) from e
    if not hasattr(cv2, "CascadeClassifier"):
      raise ImportError(f"--detect_faces needs OpenCV 4's Haar cascades, which OpenCV "
                        f"{cv2.__version__} does not ship: pip install 'opencv-python-headless<5'")
    self.cv2 = cv2
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    self.cascade = cv2.CascadeClassifier(path)
    if self.cascade.empty():
      raise RuntimeError(f"OpenCV could not load its Haar cascade {path}")
    self.max_side, self.min_frac = max_side, min_frac

  def largest_face(self, rgb: np.ndarray):
    gray = self.cv2.cvtColor(np.ascontiguousarray(rgb), self.cv2.COLOR_RGB2GRAY)
    scale = min(1.0, self.max_side / max(gray.shape))
    if scale < 1.0:  # detection on large photos is slow and needs no full resolution
      gray = self.cv2.resize(gray, None, fx=scale, fy=scale, interpolation=self.cv2.INTER_AREA)
    gray = self.cv2.equalizeHist(gray)
    min_side = max(20, int(self.min_frac * min(gray.shape)))
    faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                          minSize=(min_side, min_side))
    if len(faces) == 0:
      return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return tuple(int(round(v / scale)) for v in (x, y, w, h))


def crop_face(img: np.ndarray, box, margin: float) -> np.ndarray:
  """Square crop around ``box`` = (x, y, w, h), side max(w, h) * (1 + 2 margin), moved
  to lie inside the image, and clipped where the image is smaller than the square."""
  x, y, w, h = box
  ih, iw = img.shape[:2]
  side = int(round(max(w, h) * (1 + 2 * margin)))
  cx, cy = x + w / 2, y + h / 2
  left = int(round(min(max(cx - side / 2, 0), max(iw - side, 0))))
  top = int(round(min(max(cy - side / 2, 0), max(ih - side, 0))))
  return img[top:min(top + side, ih), left:min(left + side, iw)]


def largest_face_crop(detector: FaceDetector, img: np.ndarray, margin: float):
  """-> (box, crop) of the largest face in ``img``; ValueError when there is none."""
  box = detector.largest_face(img)
  if box is None:
    raise ValueError("no face found (if the image is already a cropped face, run "
                     "without --detect_faces)")
  return box, crop_face(img, box, margin)
