#pragma once
/// \file toptheta.hpp
/// Umbrella header: everything a user needs. Reference oracles (toptheta/reference/) are not
/// included.
///
/// Quick tour:
/// - views and storage types: types.hpp (`HeadsView`, `MatrixView`, `acc_t`)
/// - options: options.hpp (`AttentionMode`, `Placement`, `SdcMode`, `VmcMode`, ...)
/// - thresholds: threshold_table.hpp, calibrator.hpp, io/threshold_file.hpp
/// - kernels: attention.hpp (`decode`, `prefill`, `workspace_size`)
/// - engines: plan.hpp (`decode_batch`, `AttentionPlan` for the engine's own threads),
///   quantize.hpp (llama.cpp q8_0 blocks), `PagedKv` in types.hpp (block tables)
/// - a small owning KV cache that keeps the running V sum: kv_cache.hpp

#include "version.hpp"
#include "config.hpp"
#include "status.hpp"
#include "types.hpp"
#include "options.hpp"
#include "workspace.hpp"
#include "stats.hpp"
#include "threshold_table.hpp"
#include "calibrator.hpp"
#include "attention_args.hpp"
#include "attention.hpp"
#include "plan.hpp"
#include "quantize.hpp"
#include "kv_cache.hpp"
#include "io/threshold_file.hpp"
