r"""Measures the input pipeline's decode + resize throughput on 1024x768 JPEGs (KonIQ's size).

  python -m launch.benchmark_input --num_images=64 --batch_size=16 --num_threads=2

The JPEGs (quality 90) are made from scikit-image's astronaut photo scaled up to 1024x768 and
shifted per image, so no network or dataset is needed. Two figures are logged: one thread calling
images.preprocess in a loop, and the Grain evaluation pipeline with --num_threads decoding
threads (the measurement lives in dpiqa_jax/data/throughput.py).
"""

from absl import flags, logging

from dpiqa_jax.data.throughput import input_throughput

from . import cli

_NUM_IMAGES = flags.DEFINE_integer("num_images", 64, "Distinct JPEGs to generate.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Pipeline batch size.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 2, "Pipeline decoding threads.")
_PASSES = flags.DEFINE_integer("passes", 3, "Passes over the images for the pipeline figure.")


def main(argv):
    del argv
    result = input_throughput(_NUM_IMAGES.value, _BATCH_SIZE.value, _NUM_THREADS.value,
                              _PASSES.value)
    logging.info("1024x768 JPEG -> 512x512 float32: single thread %.1f img/s (%.1f img per CPU "
                 "second); pipeline with %d threads %.1f img/s",
                 result["single_thread_images_per_s"], result["single_thread_images_per_cpu_s"],
                 _NUM_THREADS.value, result["pipeline_images_per_s"])


if __name__ == "__main__":
    cli.run(main)
