"""EfficientAD (Batzner et al., WACV 2024) and the paper's variant ("ours"), one implementation.

- Teacher T: a frozen ImageNet backbone's features (the offline default, see
  ``FeatureTeacher``), a pretrained PDN from a file (the published teachers;
  the paper's setting), or a seeded random PDN (ablations only: the student
  then copies it everywhere, defects included).
- Student S: a patch description network (PDN, small or medium, no
  padding): 256 x 256 -> 56 x 56 (image size s -> s/4 - 8), with twice the
  teacher's channels: the first half imitates T, the second half imitates
  the autoencoder.
- Autoencoder A: five stride-2 convolutions and one valid convolution down to
  a 64 x 1 x 1 latent, then a decoder back to the teacher's output size:
  ``bilinear`` (published: resize + conv k4 p2 steps, dropout) or
  ``transposed`` (ours: transposed convolutions, no dropout).
- Losses: the hard-feature loss (mean of the squared T-S differences at or
  above their 0.999 quantile: the top 0.1%), L_AE = mean (T(x') - A(x'))^2 and
  L_STAE = mean (A(x') - S'(x'))^2 on an augmented x'; Adam, lr 1e-4,
  weight decay 1e-5, lr x 0.1 after 95% of the steps. No penalty term (no
  ImageNet images offline); ``describe()`` records that.
- Maps: local = channel mean of (T - S)^2, global = channel mean of
  (A - S')^2, each mapped to 0.1 (M - q_a) / (q_b - q_a) with its 0.9 and
  0.995 quantiles over normal images held out from training (a seeded 10% of
  the training images, never the test set); their mean, padded by 4 cells
  per side and resized bilinearly to the image size, is the anomaly map; its
  maximum is the image score. The published padding is 0, which outranks
  the mostly negative normalised map (a bright frame); the default pads with
  each map's minimum (``map_padding``). With ``cover_border`` the input is
  mirrored outwards first, so the map needs no frame, and the image score is
  the maximum over the cells whose patch holds no mirrored pixel. With
  ``image_score_share`` the image score is the mean of that share of the
  cells, the highest, instead of the maximum (an ablation).

The quick profile's economies (cached teacher outputs, one student pass per
step, a half-width student) are options of the same loop; the published loop
is what ``--profile paper`` runs.

Scoring is one module, ``EfficientADScorer`` (the S x S image in, scores and
maps out): ``score_images`` runs it and ``impeller_bench.inspection.export`` writes it
to ONNX.

Transposed-decoder size arithmetic: H_out = stride * (H_in - 1) + kernel - 2 * padding.
With t = the teacher's output size (56 for 256 x 256) and t divisible by 8:
ConvT(k = t/8, s = 1, p = 0): 1 -> t/8; then three ConvT(k = 4, s = 2, p = 1):
h -> 2h, so t/8 -> t/4 -> t/2 -> t. Every kernel is a multiple of its stride,
so each output pixel gets the same number of taps (no checkerboard).
"""
from . import detector  # noqa: F401  (registers efficientad and ours)
