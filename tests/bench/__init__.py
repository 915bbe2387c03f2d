"""Checks of the benchmarks themselves: the GPU benchmark's CPU smoke run and the SD1.5 configs."""
