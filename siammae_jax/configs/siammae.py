"""SiamMAE pre-training configs (ml_collections).

Launch (any field can be overridden with ``--config.<field>=...``)::

    python -m siammae_jax.main --config configs/siammae.py:vits16 --workdir DIR \
        --config.data.path=/data/k400_arrayrecord

``configs/siammae.py`` (a checkout's re-export of this module) and this file's
own path (``siammae_jax/configs/siammae.py:vits16``, or its place in an
installed package) are the same configs.

Variants: ``vits16`` / ``vits8`` / ``vitb16`` (the paper's recipe, Table 4a of
Gupta et al. 2023, on Kinetics-400 prepared with ``siammae_jax.data.prepare``)
``tiny`` (a CPU setting on the embedded synthetic videos), ``cpu_learn``
(``tiny`` trained long enough to beat its random-init twin; what ``make demo``
trains) and ``cropmae`` (CropMAE's recipe: crop pairs of still images, ViT-S/16
on ImageNet)::

    python -m siammae_jax.main --config configs/siammae.py:cropmae --workdir DIR \
        --config.data.path=/data/imagenet/train

Values marked "assumed" are not stated by the paper (MAE's choices). Any
variant trains on crop pairs with ``--config.data.pairs=crops`` (e.g.
``cpu_learn`` on crops of the synthetic videos' frames).
"""

import ml_collections

from siammae_jax.eval import config as eval_config

VARIANTS = ("vits16", "vits8", "vitb16", "tiny", "cpu_learn", "cropmae")


def get_config(arg: str = "vits16") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"config variant {arg!r} is not one of {VARIANTS}.")
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Warm start from shared weights (a workdir, an export, timm weights): the
    # whole model or the encoder only; fresh optimizer and step 0. Ignored
    # once the workdir holds a checkpoint (that run is resumed instead).
    c.init_from = ""
    c.batch_size = 2048  # global pairs per step (paper)
    # Added to XLA_FLAGS by the entry point before the backend starts (GPU
    # flags such as --xla_gpu_enable_triton_gemm=false; chosen by
    # benchmarks/accelerator_step.py --sweep). TPU flags go in LIBTPU_INIT_ARGS.
    c.xla_flags = ""

    c.model = ml_collections.ConfigDict()
    c.model.encoder = {"vits16": "S/16", "vits8": "S/8", "vitb16": "B/16"}.get(
        arg, "S/16"
    )
    c.model.image_size = 224  # paper
    c.model.mask_ratio = 0.95  # paper: f2 masked 95%, f1 unmasked
    c.model.decoder_type = "cross_self"  # paper's best decoder
    c.model.decoder_dim = 512  # assumed (MAE)
    c.model.decoder_depth = 8  # assumed (MAE)
    c.model.decoder_heads = 16  # assumed (MAE)
    c.model.norm_pix_loss = True  # assumed (MAE)
    # MAE's conventions (models_mae.py), assumed: the norm-pix target divides by
    # the unbiased per-patch variance (`target.var(dim=-1)`, torch's n - 1: ddof
    # 1; 0 is the population variance), and f2 keeps `len_keep = int(L * (1 -
    # mask_ratio))` visible patches ("int": 9 of 196 at 0.95; "round": 10).
    # Configs saved before these fields existed were trained with 0 and "round".
    c.model.norm_pix_ddof = 1
    c.model.visible_rule = "int"
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    # Attention kernel (jax.nn.dot_product_attention): xla, cudnn (flash
    # attention; bfloat16, GPU) or auto (cudnn where it applies, else xla).
    c.model.attention = "xla"
    # Pad token counts to a multiple of this for the kernel (0: off); padded
    # keys are masked by their lengths, so the model's function is unchanged.
    c.model.attention_pad = 0
    # Encode f1 and f2's visible patches in one pass (their token rows share
    # each dense layer; attention stays per frame): the same function.
    c.model.fuse_encoder = False

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # videos, frame folders or array_record shards
    # video|frames|images|array_record|tfds|synthetic; inferred from data.path
    # if empty (never as images), and the synthetic set if data.path is empty
    # too. images: a folder tree of still images (data.pairs=crops).
    c.data.format = ""
    # frames: f1 and f2 are two frames of one video (SiamMAE); crops: two crops
    # of one image or video frame, f2 a crop of f1 (CropMAE's global-to-local
    # views), each view flipped on its own. Crops of images, TFDS image
    # datasets (an `image` feature, e.g. imagenet2012) and videos alike.
    c.data.pairs = "frames"
    # data.format=tfds: a prepared TFDS dataset of videos (the package's
    # video_folder builder: `tfds build video_folder --imports
    # siammae_jax.data.tfds ...`), read with tfds.data_source.
    c.data.tfds_name = ""  # NAME[/CONFIG][:VERSION], e.g. video_folder
    c.data.tfds_data_dir = ""  # "": TFDS's default data_dir
    c.data.tfds_split = "train"
    # Open every video file at startup (frame index, in threads) and leave out
    # the unreadable ones, when there are at most this many (0: never; larger
    # folders find bad videos when they are read, counted in data_skipped).
    c.data.check_videos = 5000
    c.data.index_dir = ""  # frame-index sidecar files of video files ("": none)
    c.data.min_gap = 4  # paper: gap in [4, 48] frames at 30 fps
    c.data.max_gap = 48
    c.data.ref_fps = 30.0
    c.data.scale = (0.5, 1.0)  # paper: random-resized crop scale
    c.data.ratio = (3 / 4, 4 / 3)  # assumed
    c.data.flip = True  # paper
    # data.pairs=crops: f1 is the crop above (scale, ratio) of the frame, and f2
    # a crop of f1 with these (CropMAE's local view; the cropmae config cites).
    c.data.local_scale = (0.3, 0.6)
    c.data.local_ratio = (3 / 4, 4 / 3)
    c.data.repeats = 2  # paper: repeated sampling
    c.data.num_workers = 8
    c.data.synthetic_videos = 64  # size of the synthetic set (format=synthetic)
    # The synthetic training set's seed: fixed across run seeds, and never the
    # held-out set's (eval.synthetic_seed).
    c.data.synthetic_seed = 0
    c.data.synthetic_frames = 24
    c.data.synthetic_size = 96

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 1.5e-4  # paper; lr = base_lr x batch / 256 (MAE rule)
    c.optim.lr_reference_batch = 256
    c.optim.b1 = 0.9  # paper
    c.optim.b2 = 0.95  # paper
    c.optim.weight_decay = 0.05  # paper; not on biases / norms (assumed, MAE)
    c.optim.epochs = 2000  # paper (ablations: 400)
    c.optim.warmup_epochs = 40  # paper
    c.optim.end_lr = 0.0  # assumed: cosine to 0
    c.optim.grad_clip = 0.0  # off (MAE uses none)
    c.optim.accum_steps = 1  # micro-batches per step (gradient accumulation)
    # Adam's first moment: "" (the parameters' float32) or "bfloat16" (half its
    # memory and optimizer-update traffic; BENCHMARKS.md, issue 19).
    c.optim.mu_dtype = ""

    c.train = ml_collections.ConfigDict()
    c.train.steps = -1  # -1: from optim.epochs; else overrides the length
    c.train.log_every = 50
    c.train.image_every = 1000
    c.train.max_bad_steps = 10  # non-finite steps in a row before stopping
    # The host reads the device (the non-finite guard, the SIGTERM/Ctrl-C
    # check) every N steps and at every step that logs, evaluates or
    # checkpoints; between them it runs ahead. A stop saves at most N steps
    # after the signal; divergence is seen at most N steps late.
    c.train.check_every = 10
    c.train.profile_steps = 0
    # One live progress line (step, loss, pairs/s, J&F, ETA) instead of console
    # lines of every scalar (TensorBoard and metrics.jsonl keep them all).
    c.train.progress_bar = False
    # Learning measures (past-frame use, decoder correspondence) on held-out
    # synthetic videos every N steps (0: off); see siammae_jax/eval/learning.py.
    c.train.measure_every = 0
    c.train.measure_videos = 40
    c.train.measure_gap = 12  # frames between f1 and f2 of the held-out pairs

    # Online evaluation (siammae_jax/train/evaluation.py): label propagation
    # of the current encoder on DAVIS, JHMDB and/or VIP every N steps and at
    # the end (0: off), with the code and settings of `python -m
    # siammae_jax.eval TASK`.
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0
    # Named evaluation protocol (docs/protocols.md: siammae, dino, crw,
    # 480x880); fields of eval.davis that differ from the siammae protocol
    # apply on top of it and are recorded as departures in summary.json.
    c.eval.protocol = "siammae"
    # Benchmarks scored online (comma-separated: davis, jhmdb, vip), each
    # logging eval/<task>/<metric> and its random-init twin's once.
    c.eval.tasks = "davis"
    c.eval.best_metric = "davis/J&F"  # ranks checkpoints: <task>/<metric>
    # "synthetic" (held-out videos, every layout), a folder holding DAVIS/,
    # JHMDB/ and VIP/, or with one task its root (e.g. a DAVIS-2017 root).
    c.eval.data = ""
    c.eval.max_videos = 30  # the first N videos of each split
    # Time bound of one evaluation: the first one (the random-init encoder, at
    # step 0) keeps the sequences done within it, and every later one scores
    # the same sequences.
    c.eval.max_seconds = 600.0
    c.eval.batch_size = 8  # frames per encoder call (rounded up to the devices)
    c.eval.overlays = 2  # videos drawn as overlay pictures in TensorBoard
    c.eval.keep_best = True  # also keep the best checkpoint (orbax BestN)
    c.eval.synthetic_seed = 1  # eval.data=synthetic: the held-out set's seed
    c.eval.synthetic_frames = 24
    # default, or unseen: textures and motion the training set never shows
    # (siammae_jax/data/synthetic_videos.py STYLES).
    c.eval.synthetic_style = "default"
    # Each benchmark's section (split, input size, top-k, ...: the siammae
    # protocol's values; fields that differ are departures from eval.protocol).
    for task in ("davis", "jhmdb", "vip"):
        c.eval[task] = eval_config.task_section(task)

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Logical axis (model) -> mesh axis. Unlisted names are replicated.
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("decoder_embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
    )

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000  # steps
    c.checkpoint.keep = 3  # latest checkpoints kept
    c.checkpoint.keep_every = 0  # also keep every N-th step (0: none)
    c.checkpoint.async_save = True

    if arg in ("tiny", "cpu_learn"):
        _tiny(c)
    if arg == "cpu_learn":
        _cpu_learn(c)
    if arg == "cropmae":
        _cropmae(c)
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """A CPU setting: demo-size ViT on the embedded synthetic videos."""
    c.batch_size = 16
    c.model.encoder = "demo/8"
    c.model.image_size = 64
    c.model.decoder_dim = 128
    # One cross-self block: at this budget a 2-block decoder copies from f1 in
    # its first block and leaves the last one's cross-attention diffuse, so
    # the last block (what the correspondence measure reads) says nothing.
    c.model.decoder_depth = 1
    c.model.decoder_heads = 4
    c.model.mask_ratio = 0.9
    c.model.dtype = "float32"
    c.data.format = ""  # the synthetic set, unless --config.data.path is given
    # Gaps of 1-4 frames move a 64-px synthetic video by ~1-5 px (< one 8-px
    # patch): small enough that copying from the right place in f1 pays, which
    # the decoder then learns within a few hundred steps. With gaps of 4-16
    # (1-2+ patches) it learns only f1's colours (BENCHMARKS.md, learning signal).
    c.data.min_gap = 1
    c.data.max_gap = 4
    c.data.num_workers = 0
    c.optim.base_lr = 1e-3 * 256 / 16  # -> lr 1e-3 at batch 16
    c.optim.epochs = 100
    c.optim.warmup_epochs = 5
    c.train.log_every = 10
    c.train.image_every = 100
    c.train.measure_every = 100
    c.train.measure_gap = 4  # inside the training gaps
    c.checkpoint.every = 50
    c.eval.every = 0  # cpu_learn and the demo turn it on
    c.eval.data = "synthetic"
    c.eval.max_videos = 16
    c.eval.max_seconds = 120.0
    c.eval.davis.short_side = c.model.image_size
    c.eval.jhmdb.size = c.model.image_size
    c.eval.vip.long_side = c.model.image_size


def _cpu_learn(c: ml_collections.ConfigDict) -> None:
    """The issue-17 study's best CPU setting for the encoder (BENCHMARKS.md,
    "Pre-training that beats random init"): ``tiny`` with plain-pixel targets
    (``norm_pix_loss=False``: per-patch normalised targets drop the colour the
    held-out J&F rewards) trained 3000 steps (~13 minutes on 2 cores), scored
    online every 750 steps on the frozen held-out set A. Its encoder beats the
    random-init twin by +0.036 +- 0.001 (set A) and +0.032 +- 0.008 (set B) over
    3 seeds (+0.03 in every seed on A, in 2 of 3 on B); its one-block decoder
    does not follow motion (the study's 2-block, mask-0.5 setting does)."""
    c.model.norm_pix_loss = False
    c.train.steps = 3000
    c.eval.every = 750
    c.eval.max_videos = 40
    c.eval.max_seconds = 600.0


def _cropmae(c: ml_collections.ConfigDict) -> None:
    """CropMAE's ImageNet recipe (Eymael et al., "Efficient Image Pre-Training
    with Siamese Cropped Masked Autoencoders", ECCV 2024): ViT-S/16 trained
    from two crops of one still image, the second (98.5% masked) inside the
    first. Sources: github.com/alexandre-eymael/CropMAE, cited as FILE:LINE
    (scripts/train_cropmae_in.sh at 66815f53, train_cropmae_in.py at aa35f898,
    misc/util.py at 1d4f9a90, models/SiamMAE.py at a36a3641, the rest at
    ffafcf47). Their README reports DAVIS-2017 J&F 60.4 for these weights.

    Differences that stay: our cross_self decoder block is pre-norm cross-,
    then self-attention, then a 4x MLP; CropMAE's (models/components/
    DecoderBlock.py:42-43, forward) is post-norm cross-attention, MLP (2048
    wide), then self-attention, with dropout 0.1. CropMAE resizes with
    torchvision (bilinear, antialiased), we with Pillow's bilinear.
    Kinetics-400 frames instead of images (scripts/train_cropmae_k400.sh):
    ``--config.data.format=video --config.data.scale="(0.5,1.0)"`` (its line 81).
    """
    c.seed = 42  # train_cropmae_in.sh:90
    # Effective batch 2048: 128 per GPU (train_cropmae_in.sh:63) on 4 nodes x 4
    # GPUs (:7-8), effective_batch_size = batch x accum x world
    # (train_cropmae_in.py:47).
    c.batch_size = 2048
    # ViT-S/16 (misc/util.py:15 architecture vits, the script keeps it;
    # models/SiamMAE.py:139 embed 384, depth 12, heads 6) at 224 px
    # (train_cropmae_in.sh:72, 80).
    c.model.encoder = "S/16"
    c.model.image_size = 224
    # f1 (first view) whole, f2 masked (models/SiamMAE.py:121-128) at 98.5%
    # (train_cropmae_in.sh:75; misc/util.py:19); len_keep = int(L x (1 -
    # ratio)) (models/components/mae/models_mae.py:141): 2 of 196 visible.
    c.model.mask_ratio = 0.985
    c.model.visible_rule = "int"
    c.model.decoder_type = "cross_self"  # see the docstring's differences
    c.model.decoder_dim = 256  # train_cropmae_in.sh:68
    c.model.decoder_depth = 4  # train_cropmae_in.sh:67
    c.model.decoder_heads = 8  # train_cropmae_in.sh:69
    c.model.norm_pix_loss = True  # train_cropmae_in.sh:95
    c.model.norm_pix_ddof = 1  # models_mae.py forward_loss: target.var (n - 1)
    # ImageNet's training images: every *.JPEG under data_path
    # (train_cropmae_in.py:100); one pair per image (data/CropMAE_PIPE.py:20-24).
    c.data.format = "images"
    c.data.pairs = "crops"  # GlobalToLocal (misc/util.py:62; the script :96)
    c.data.repeats = 1
    # f1: a crop of the image, area 10-100% (train_cropmae_in.sh:81-82), aspect
    # 3/4-4/3 (:85, 87); f2: a crop of f1 (data/util/CropMAEStrategies.py:52-55),
    # area 30-60% (train_cropmae_in.sh:83-84), aspect 3/4-4/3 (:86, 88). The box
    # draw is torchvision.transforms.v2's RandomResizedCrop (10 tries, then a
    # centre crop): CropMAE's RRC.get_params (data/util/image_utils.py:14-34,
    # no retries) is v1's hook, which v2 (torchvision 0.17.1, requirements.txt:2)
    # never calls.
    c.data.scale = (0.1, 1.0)
    c.data.ratio = (3 / 4, 4 / 3)
    c.data.local_scale = (0.3, 0.6)
    c.data.local_ratio = (3 / 4, 4 / 3)
    # Each view flipped with p 0.5 on its own (misc/util.py:64;
    # CropMAEStrategies.py:34, 58-59), after f2 was cropped from unflipped f1.
    c.data.flip = True
    # AdamW, betas 0.9/0.95 (train_cropmae_in.sh:64), weight decay 0.05 (:93)
    # not on biases and norms (train_cropmae_in.py:88); lr = 1e-4 (sh:65) x
    # batch / 256 (train_cropmae_in.py:54) = 8e-4; 400 epochs (sh:71), warmup
    # 5% (sh:92) = int(0.05 x 400) = 20 epochs (train_cropmae_in.py:51), cosine
    # to 0 (sh:77).
    c.optim.base_lr = 1e-4
    c.optim.lr_reference_batch = 256
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.05
    c.optim.epochs = 400
    c.optim.warmup_epochs = 20
    c.optim.end_lr = 0.0
