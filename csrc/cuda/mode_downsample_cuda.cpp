// Tensor side of the CUDA mode_downsample kernel (compiled by the host compiler, registered for CUDA).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../mode_downsample.h"
#include "launchers.h"

namespace ssfdan_ext {
namespace {

at::Tensor mode_downsample_cuda(const at::Tensor& labels_in, int64_t out_h, int64_t out_w,
                                int64_t num_classes) {
  check_mode_downsample_args(labels_in, out_h, out_w, num_classes);
  TORCH_CHECK(labels_in.is_cuda(), "mode_downsample: labels must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(labels_in.device());
  const at::Tensor labels = labels_in.contiguous();
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  at::Tensor out = at::empty({B, out_h, out_w}, labels.options());
  if (B == 0) return out;
  // [flag, value] in one int64 buffer: the flag lives in the low 32 bits of element 0.
  at::Tensor status = at::zeros({2}, labels.options());
  int64_t* status_ptr = status.data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_mode_downsample(labels.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                        reinterpret_cast<int*>(status_ptr), status_ptr + 1, B, H, W, out_h,
                                        out_w, static_cast<int>(num_classes), stream));
  const at::Tensor host = status.cpu();  // the one host sync: the validity flag
  TORCH_CHECK_VALUE(host[0].item<int64_t>() == 0, "mode_downsample: labels must lie in [0, ", num_classes,
              ") or equal 255 (IGNORE), found ", host[1].item<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) { m.impl("mode_downsample", &mode_downsample_cuda); }

}  // namespace ssfdan_ext
