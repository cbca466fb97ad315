"""Side-by-side benchmark of the SLAB backbones and mmdet's stock PVT / Swin (and of
whole ImageNet classifiers against mmpretrain's Swin-T classifier), on CPU or CUDA (the
application behind ``tools/benchmark.py``).

One process, one run: every model is built once, and for each *case* (input size, batch,
autocast dtype, eval forward or training step) the calls of all models are interleaved
round by round (after warm-up), so that drifting machine load hits every model alike.
Reported per model and case:

* latency (median, min, max over the rounds; :mod:`mmslab.timing`):

  - eval: one ``torch.no_grad()`` eval forward;
  - train (``--train``): one training step of the backbone alone -- ``zero_grad``, forward
    in train mode, loss = the sum of the means of the output maps, backward -- under
    autocast when ``--amp`` is given, with a ``torch.amp.GradScaler`` for float16 (the
    whole classifiers of :mod:`bench.classifiers`: their head loss on fixed random labels,
    backward, then their config's gradient clipping and optimizer step). The
    SLAB models train with ``norm_eval=False`` and ``lam = 0.5`` (LayerNorm and RepBN both
    run, RepBN on batch statistics: the middle of the PRepBN schedule); the ``*_deploy``
    forms are inference-only and are not trained;
  - ``--amp fp16|bf16``: the call runs under ``torch.autocast(device, dtype)`` (weights and
    input stay float32, as in mixed-precision training and ``fp16=True`` test loops);
  - CPU: wall time of one call (``time.perf_counter``), intra-op threads fixed by
    ``torch.set_num_threads``;
  - CUDA: CUDA events around ``inner`` back-to-back calls (``inner`` chosen from the
    warm-up so that a round lasts ~50 ms; the time per call is reported), after
    ``warmup`` untimed calls of every model;

* MACs (:mod:`bench.macs`): multiply-accumulates of the matmul-type ops of the *forward*,
  counted by mmengine's ``FlopAnalyzer`` on a traced float32 eval forward of one image
  (times the batch);
* achieved GFLOP/s = 2 * MACs / median latency (eval cases), next to the dense GEMM rate
  (:mod:`bench.machine`: ``torch.mm`` of two square matrices, 2048 on CPU, 4096 on CUDA)
  of the case's compute dtype measured in the same run (float32: at the start and after
  each case, with a warning when it moved by more than 15%, i.e. the machine was not
  quiet);
* peak memory (:mod:`bench.memory`), of a separate untimed call: CPU -- what the call
  allocates through PyTorch's CPU allocator (profiler memory events) and the growth of the
  process's peak RSS over the timed calls; CUDA -- ``max_memory_allocated`` over the call
  minus what was allocated before it, and that plus the model's weights and buffers;
* CPU: the minor page faults of the process per timed call (:mod:`bench.allocator`):
  glibc gives large freed blocks back to the OS, and a forward that allocates large fresh
  tensors faults their pages in again on every call; ``--allocator retain`` makes glibc
  keep what the process frees (the steady state of jemalloc / tcmalloc), and the header
  states the allocator;
* ``--compile``: every model is also wrapped in ``torch.compile`` (sharing the eager
  model's weights) and timed next to it as "<model> [compiled]". The first call of each
  case compiles (a new shape, dtype or train/eval mode is a new graph); its time minus the
  median is reported as the compile time, and the number of graph breaks dynamo counted
  is logged.

The report (:mod:`bench.report`) is a markdown table and a latency-vs-megapixels plot;
the targets (:mod:`bench.targets`, the table ``tools/benchmark_targets.csv``) are ratios
of two measurements, judged on what the run measured.

TF32: on CUDA the header states ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` (PyTorch's defaults: off for matmuls, on for cuDNN
convolutions); ``--tf32 on|off`` sets both.
"""
