// The precompiled header: the LibTorch headers that most translation units need. Adding
// <torch/torch.h> here would double the build time on 2 cores; keep it narrow.
#pragma once
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
