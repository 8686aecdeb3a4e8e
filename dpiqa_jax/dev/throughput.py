"""Decode + resize throughput of the input pipeline on synthetic 1024x768 JPEGs (KonIQ's size).

The JPEGs (quality 90) are scikit-image's astronaut photo scaled up and shifted per image, so no
dataset or network is needed. Used by launch/benchmark.py (`--only=input_pipeline`).
"""

import io
import time

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from dpiqa_jax.data import images, pipeline, sources

JPEG_SIZE = (1024, 768)  # (width, height)
JPEG_QUALITY = 90


def synthetic_jpegs(num_images: int, size: tuple[int, int] = JPEG_SIZE,
                    quality: int = JPEG_QUALITY) -> list[bytes]:
    """`num_images` distinct JPEGs of `size` (width, height): the astronaut, shifted."""
    base = Image.fromarray(skimage_data.astronaut()).resize(size, Image.BILINEAR)
    pixels = np.asarray(base)
    encoded = []
    for i in range(num_images):
        shifted = np.roll(pixels, shift=(7 * i, 13 * i), axis=(0, 1))
        buffer = io.BytesIO()
        Image.fromarray(shifted).save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded


def single_thread_throughput(encoded: list[bytes], config: images.ImageConfig
                             ) -> tuple[float, float]:
    """images.preprocess (decode + resize + to float) in one thread: images per wall-clock
    second, and per CPU second of this process (the figure on an unloaded core)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i, data in enumerate(encoded):
        images.preprocess(data, config, name=f"jpeg{i}")
    return (len(encoded) / (time.perf_counter() - wall),
            len(encoded) / (time.process_time() - cpu))


def input_throughput(num_images: int = 64, batch_size: int = 16, num_threads: int = 2,
                     passes: int = 3,
                     config: images.ImageConfig = images.ImageConfig()) -> dict[str, float]:
    """Decode + resize throughput (images/s) for 1024x768 JPEGs.

    Returns {"single_thread_images_per_s", "single_thread_images_per_cpu_s",
    "pipeline_images_per_s"}; the pipeline figure is the Grain evaluation pipeline over an
    in-memory source, `passes` times over the images.
    """
    encoded = synthetic_jpegs(num_images)
    source = sources.InMemorySource([(f"jpeg{i}.jpg", data, 0.5) for i, data in
                                     enumerate(encoded)])
    single_wall, single_cpu = single_thread_throughput(encoded, config)
    batches_per_pass = pipeline.padded_length(num_images, batch_size, 1) // batch_size

    def repeated_batches():
        for _ in range(passes):
            yield from pipeline.eval_dataset(source, batch_size, config, num_threads=num_threads)

    timed = pipeline.measure_throughput(repeated_batches(),
                                        num_batches=passes * batches_per_pass - 1)
    return {"single_thread_images_per_s": single_wall,
            "single_thread_images_per_cpu_s": single_cpu,
            "pipeline_images_per_s": timed["images_per_s"]}
