// The re-id evaluation's ranking kernel on the CPU: for each query (a row of its distance block)
// and each of its true matches, how many gallery items precede the match in the query's ranking
// (by distance, then gallery index). One pass over each distance row; nothing is sorted.
// Items before a row's first match or after its last are only counted (eight float32 lanes per
// compare); the items between them are binned and placed as below.
//
// rga_ops_eval::count_before(dist [C, G], distance [C, L], index [C, L], count [C]) -> [C, L] int64
//   distance/index: each row's matches in ranking order (the first count[r] valid), their
//   distances read from `dist` itself. out[r, k] = #{j : (dist[r, j], j) < (distance[r, k], index[r, k])}
//   for k < count[r], 0 past it.
//
// Each row is binned on its own scale: bin(d) = floor(clamp((d - origin) * scale, 0, B)) in double,
// the first match near 1.5 and the last near B - 0.5. Every step rounds monotonically, so bin is a
// non-decreasing function of d, the same for items and matches (the matches' bins are computed
// from the same values by the same function). An item in a bin below a match's bin therefore
// precedes it and one in a bin above follows it; only the items of a bin that holds matches are
// compared with those matches exactly. Rounding can only make bins coarser, never wrong.
//
// The models package (models/evaluation/ranking.py) calls it for CPU tensors and keeps the same
// computation in PyTorch ops for the other devices; a separate library, not part of rga_ops' op
// table (no autograd, no backends: an evaluation helper).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// RGA_OPS_MULTIVERSION (the float32 loops compiled for AVX2 and for baseline x86-64), f32x8, load8.
#include "vectorized_gate.h"

namespace rga_ops::cpu {
namespace {

// Rows per task: in a column-major block (the layout the evaluation ranks), 16 float32 rows are
// one cache line of each gallery item's column.
constexpr int64_t kTileRows = 16;
// Bins per row: 8 per match, between these bounds (tables of kMaxBins int32 per row of a tile).
constexpr int64_t kMinBins = 16;
constexpr int64_t kMaxBins = 8192;

struct RowPlan {
  int64_t n = 0;                 // valid matches
  int64_t bins = 0;              // B: bins 0..B
  double origin = 0.0, scale = 1.0;
  const double* t = nullptr;     // matches' distances [n] (converted to double)
  const int64_t* m = nullptr;    // matches' gallery indices [n]
  std::vector<int32_t> first;    // [B + 2]: matches in bins below b
  std::vector<int64_t> hits;     // [n + 1]: items placed before match p (p = matches at or before them)

  int64_t bin(double d) const {
    double pos = (d - origin) * scale;
    pos = pos > 0.0 ? pos : 0.0;  // NaN cannot occur: finite inputs, finite origin and scale
    pos = pos < static_cast<double>(bins) ? pos : static_cast<double>(bins);
    return static_cast<int64_t>(pos);
  }
};

void plan_row(RowPlan& plan, const double* t, const int64_t* m, int64_t n) {
  plan.n = n;
  plan.t = t;
  plan.m = m;
  plan.hits.assign(n + 1, 0);
  if (n == 0) {
    return;
  }
  plan.bins = std::min(kMaxBins, std::max(kMinBins, 8 * n));
  const double first = t[0], last = t[n - 1];
  // A span of zero (one match, or all tied) is widened to 2^-8 of the distances' magnitude.
  const double floor_span = std::max(std::max(std::fabs(first), std::fabs(last)) * (1.0 / 256.0),
                                     std::numeric_limits<double>::min() * 4.0 * static_cast<double>(plan.bins));
  const double span = std::max(last - first, floor_span);
  plan.scale = std::min(static_cast<double>(plan.bins - 2) / span, 1e300);
  plan.origin = first - 1.5 / plan.scale;
  plan.first.assign(plan.bins + 2, 0);
  for (int64_t k = 0; k < n; ++k) {
    plan.first[plan.bin(t[k]) + 1] += 1;
  }
  for (int64_t b = 1; b < plan.bins + 2; ++b) {
    plan.first[b] += plan.first[b - 1];
  }
}

// One item (distance d, gallery index j) of a planned row.
inline void place(RowPlan& plan, double d, int64_t j) {
  const int64_t b = plan.bin(d);
  int64_t p = plan.first[b];
  const int64_t end = plan.first[b + 1];
  while (p < end && (plan.t[p] < d || (plan.t[p] == d && plan.m[p] <= j))) {
    ++p;
  }
  plan.hits[p] += 1;
}

// Items before a row's first match precede all its matches and items after its last match
// precede none: only the items between them (from the first match's distance to the last's,
// ties included) are binned and placed. `lo`/`hi` are those distances (lo = +inf, hi = -inf
// for a row without matches, so that none of its items is placed).
struct Bounds {
  double lo, hi;
};

inline Bounds bounds(const RowPlan& plan) {
  if (plan.n == 0) {
    return {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
  }
  return {plan.t[0], plan.t[plan.n - 1]};
}

// Any dtype, any layout: rows r0..r1 one item at a time.
template <typename scalar_t>
void count_rows_scalar(const scalar_t* dist, int64_t row_stride, int64_t col_stride, int64_t num_gallery,
                       std::vector<RowPlan>& plans, int64_t r0) {
  const int64_t rows = static_cast<int64_t>(plans.size());
  std::vector<Bounds> b(rows);
  std::vector<int64_t> below(rows, 0);
  for (int64_t r = 0; r < rows; ++r) {
    b[r] = bounds(plans[r]);
  }
  for (int64_t j = 0; j < num_gallery; ++j) {
    const scalar_t* column = dist + j * col_stride;
    for (int64_t r = 0; r < rows; ++r) {
      const double d = static_cast<double>(column[(r0 + r) * row_stride]);
      if (d < b[r].lo) {
        below[r] += 1;
      } else if (d <= b[r].hi) {
        place(plans[r], d, j);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    plans[r].hits[0] += below[r];
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors inside the functions below only
inline bool any8(const i32x8& m) {
  uint64_t w[4];
  std::memcpy(w, &m, sizeof(w));
  return (w[0] | w[1] | w[2] | w[3]) != 0;
}

inline f32x8 splat8(float x) { return f32x8{x, x, x, x, x, x, x, x}; }

// float32, 16 rows stored column-major (row stride 1): eight rows per vector, two vectors per item.
// Bounds in float32 are exact (the matches' distances are entries of `dist`).
RGA_OPS_MULTIVERSION
void count_tile_f32_columns(const float* dist, int64_t col_stride, int64_t num_gallery, RowPlan* plans) {
  float lo[kTileRows], hi[kTileRows];
  for (int64_t r = 0; r < kTileRows; ++r) {
    const Bounds b = bounds(plans[r]);
    lo[r] = static_cast<float>(b.lo);
    hi[r] = static_cast<float>(b.hi);
  }
  const f32x8 lo0 = load8(lo), lo1 = load8(lo + 8), hi0 = load8(hi), hi1 = load8(hi + 8);
  i32x8 below0 = {}, below1 = {};
  for (int64_t j = 0; j < num_gallery; ++j) {
    const float* column = dist + j * col_stride;
    const f32x8 d0 = load8(column), d1 = load8(column + 8);
    below0 -= (d0 < lo0);
    below1 -= (d1 < lo1);
    const i32x8 in0 = (d0 >= lo0) & (d0 <= hi0), in1 = (d1 >= lo1) & (d1 <= hi1);
    if (any8(in0 | in1)) {
      for (int64_t r = 0; r < kTileRows; ++r) {
        const float d = column[r];
        if (d >= lo[r] && d <= hi[r]) {
          place(plans[r], static_cast<double>(d), j);
        }
      }
    }
  }
  for (int64_t r = 0; r < 8; ++r) {
    plans[r].hits[0] += below0[r];
    plans[r + 8].hits[0] += below1[r];
  }
}

// float32, one row with contiguous items: eight items per vector.
RGA_OPS_MULTIVERSION
void count_row_f32(const float* row, int64_t num_gallery, RowPlan& plan) {
  const Bounds b = bounds(plan);
  const float lo = static_cast<float>(b.lo), hi = static_cast<float>(b.hi);
  const f32x8 lo8 = splat8(lo), hi8 = splat8(hi);
  i32x8 below8 = {};
  int64_t below = 0, j = 0;
  for (; j + 8 <= num_gallery; j += 8) {
    const f32x8 d = load8(row + j);
    below8 -= (d < lo8);
    if (any8((d >= lo8) & (d <= hi8))) {
      for (int64_t k = j; k < j + 8; ++k) {
        if (row[k] >= lo && row[k] <= hi) {
          place(plan, static_cast<double>(row[k]), k);
        }
      }
    }
  }
  for (; j < num_gallery; ++j) {
    if (row[j] < lo) {
      below += 1;
    } else if (row[j] <= hi) {
      place(plan, static_cast<double>(row[j]), j);
    }
  }
  for (int64_t k = 0; k < 8; ++k) {
    below += below8[k];
  }
  plan.hits[0] += below;
}
#pragma GCC diagnostic pop

template <typename scalar_t>
void count_tile(const scalar_t* dist, int64_t row_stride, int64_t col_stride, int64_t num_gallery, int64_t r0,
                int64_t r1, const double* t, const int64_t* m, const int64_t* count, int64_t width, int64_t* out) {
  std::vector<RowPlan> plans(r1 - r0);
  for (int64_t r = r0; r < r1; ++r) {
    plan_row(plans[r - r0], t + r * width, m + r * width, count[r]);
  }
  // The vector paths count in int32 lanes: galleries below 2^31 items.
  const bool vector = std::is_same_v<scalar_t, float> && num_gallery < std::numeric_limits<int32_t>::max();
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (vector && row_stride == 1 && r1 - r0 == kTileRows) {
      count_tile_f32_columns(dist + r0, col_stride, num_gallery, plans.data());
    } else if (vector && col_stride == 1 && r1 - r0 == 1) {
      count_row_f32(dist + r0 * row_stride, num_gallery, plans[0]);
    } else {
      count_rows_scalar(dist, row_stride, col_stride, num_gallery, plans, r0);
    }
  } else {
    count_rows_scalar(dist, row_stride, col_stride, num_gallery, plans, r0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const RowPlan& plan = plans[r - r0];
    int64_t* o = out + r * width;
    int64_t before = 0;
    for (int64_t k = 0; k < width; ++k) {
      if (k < plan.n) {
        before += plan.hits[k];
        o[k] = before;
      } else {
        o[k] = 0;
      }
    }
  }
}

at::Tensor count_before_cpu(const at::Tensor& dist, const at::Tensor& distance, const at::Tensor& index,
                            const at::Tensor& count) {
  TORCH_CHECK(dist.dim() == 2, "count_before: dist must be [C, G], got shape ", dist.sizes());
  TORCH_CHECK(distance.dim() == 2 && distance.size(0) == dist.size(0),
              "count_before: distance must be [C, L] with C = ", dist.size(0), ", got shape ", distance.sizes());
  TORCH_CHECK(index.sizes() == distance.sizes(), "count_before: index must have distance's shape ",
              distance.sizes(), ", got ", index.sizes());
  TORCH_CHECK(count.dim() == 1 && count.size(0) == dist.size(0), "count_before: count must be [C] with C = ",
              dist.size(0), ", got shape ", count.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong && count.scalar_type() == at::kLong,
              "count_before: index and count must be int64, got ", index.scalar_type(), " and ", count.scalar_type());
  TORCH_CHECK(distance.scalar_type() == dist.scalar_type(), "count_before: distance must have dist's dtype ",
              dist.scalar_type(), ", got ", distance.scalar_type());
  const int64_t rows = dist.size(0), num_gallery = dist.size(1), width = distance.size(1);
  const at::Tensor t = distance.to(at::kDouble).contiguous();
  const at::Tensor m = index.contiguous();
  const at::Tensor n = count.contiguous();
  TORCH_CHECK(rows == 0 || (n.min().item<int64_t>() >= 0 && n.max().item<int64_t>() <= width),
              "count_before: count must lie in [0, ", width, "]");
  at::Tensor out = at::empty({rows, width}, index.options());
  if (rows == 0 || width == 0) {
    return out;
  }
  // Rows by tiles where a row's items are strided (a transposed block), one by one where they are contiguous.
  const int64_t tile = dist.stride(0) == 1 ? kTileRows : 1;
  const double* tp = t.const_data_ptr<double>();
  const int64_t* mp = m.const_data_ptr<int64_t>();
  const int64_t* np = n.const_data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t tiles = (rows + tile - 1) / tile;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dist.scalar_type(), "count_before", [&] {
    const scalar_t* dp = dist.const_data_ptr<scalar_t>();
    const int64_t row_stride = dist.stride(0), col_stride = dist.stride(1);
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r0 = i * tile, r1 = std::min(rows, r0 + tile);
        count_tile(dp, row_stride, col_stride, num_gallery, r0, r1, tp, mp, np, width, op);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(rga_ops_eval, m) {
  m.def("count_before(Tensor dist, Tensor distance, Tensor index, Tensor count) -> Tensor");
}

TORCH_LIBRARY_IMPL(rga_ops_eval, CPU, m) { m.impl("count_before", count_before_cpu); }

}  // namespace rga_ops::cpu
