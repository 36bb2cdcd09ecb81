"""An AdaptSegNet-style training loop with the SS-D in place of the global discriminator, on generated scenes.

The loop has the structure of the single-level AdaptSegNet script (a segmenter that returns logits only, SGD with
1x/10x parameter groups and poly decay, Adam for the discriminator, the generator step with the discriminator
frozen, then the discriminator's source and target halves, each backpropagated right after its own forward), with
the changes docs/porting.md walks through, each marked "SS-D:". Runs on the CPU in seconds at the default size:

    python examples/adaptsegnet_style.py --iterations 20
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import ssfdan_ext as sd
from ssfdan_ext.data import SyntheticScenes


class LogitsOnlySegNet(nn.Module):
    """A small DeepLab-like segmenter that, like most existing ones, returns logits only (stride 8)."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin, cout, stride=1, dilation=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.layer1 = nn.Sequential(block(3, width, 2), block(width, width))
        self.layer2 = nn.Sequential(block(width, 2 * width, 2), block(2 * width, 2 * width))
        self.layer4 = nn.Sequential(block(2 * width, 4 * width, 2), block(4 * width, 4 * width, dilation=2))
        self.classifier = nn.Conv2d(4 * width, num_classes, 3, padding=1)
        self.feature_channels = 4 * width

    def forward(self, x):
        return self.classifier(self.layer4(self.layer2(self.layer1(x))))


def poly_lr(base: float, it: int, total: int, power: float = 0.9) -> float:
    return base * (1 - it / total) ** power


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--size", default="64x128", help="HxW of source and target crops")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--lr", type=float, default=2.5e-3)
    p.add_argument("--lr-d", type=float, default=1e-4)
    p.add_argument("--lambda-adv", type=float, default=1e-3, help="delta of the paper, lambda_adv of AdaptSegNet")
    p.add_argument("--backend", default="auto", help="SeparatedDiscriminator backend")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--print-every", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    torch.manual_seed(0)
    size = tuple(int(v) for v in args.size.split("x"))
    dev = torch.device(args.device)
    C = args.classes
    source = SyntheticScenes("source", C, size, length=64)
    target = SyntheticScenes("target", C, size, length=64)
    loaders = [iter(torch.utils.data.DataLoader(d, batch_size=1, shuffle=True)) for d in (source, target)]

    net = LogitsOnlySegNet(C).to(dev)
    # SS-D: the discriminator reads the feature map the classifier reads; WithFeatures exposes it by layer name.
    model = sd.WithFeatures(net, layer="layer4")
    disc = sd.SeparatedDiscriminator(C, net.feature_channels, channels=(64, 64, 32, 32), backend=args.backend).to(dev)

    head = list(net.classifier.parameters())
    backbone = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    opt = torch.optim.SGD([{"params": backbone, "lr": args.lr}, {"params": head, "lr": 10 * args.lr}],
                          lr=args.lr, momentum=0.9, weight_decay=5e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr_d, betas=(0.9, 0.99))

    history = []
    for it in range(args.iterations):
        opt.zero_grad()
        opt_d.zero_grad()
        for i, group in enumerate(opt.param_groups):
            group["lr"] = poly_lr(args.lr, it, args.iterations) * (10 if i == 1 else 1)
        for group in opt_d.param_groups:
            group["lr"] = poly_lr(args.lr_d, it, args.iterations)
        img_s, lbl_s, _ = next(loaders[0])
        img_t, _, _ = next(loaders[1])
        img_s, lbl_s, img_t = img_s.to(dev), lbl_s.to(dev), img_t.to(dev)

        # --- train G: the discriminator is fixed
        for p in disc.parameters():
            p.requires_grad_(False)
        logits_s, feat_s = model(img_s)
        pred_s = F.interpolate(logits_s, size=lbl_s.shape[-2:], mode="bilinear", align_corners=True)
        loss_seg = F.cross_entropy(pred_s, lbl_s, ignore_index=sd.IGNORE)
        loss_seg.backward()

        logits_t, feat_t = model(img_t)
        pred_t = F.interpolate(logits_t, size=img_t.shape[-2:], mode="bilinear", align_corners=True)
        # SS-D: class-wise pseudo labels of the target (the top rho most confident pixels of each class; rho is 0
        # in the first iteration, so the adversarial loss is exactly 0 there) and their CA-R weights tau. The two
        # downsampled label maps the discriminator needs come out of the same op.
        rho = sd.rho_schedule(it, args.iterations)
        h, w = feat_t.shape[-2:]
        sel_t = sd.confidence_select(pred_t.detach(), rho, out_sizes=((h, w), disc.output_size(h, w)))
        # SS-D: the discriminator returns DiscriminatorOutput(logits, labels); the loss functions read both.
        out_t = disc(feat_t, sel_t.labels, label_maps=sel_t.downsampled)
        loss_adv = sd.adversarial_loss(out_t, sel_t.tau)
        (args.lambda_adv * loss_adv).backward()

        # --- train D on detached features, both domains in one forward (the weights read and their gradient written
        # once when the two feature maps have one size)
        for p in disc.parameters():
            p.requires_grad_(True)
        hs, ws = feat_s.shape[-2:]
        # SS-D: the source's class masks come from its own prediction, selected the same way.
        sel_s = sd.confidence_select(pred_s.detach(), rho, out_sizes=((hs, ws), disc.output_size(hs, ws)))
        plan_s = disc.plan(sel_s.labels, (hs, ws), label_maps=sel_s.downsampled)
        plan_t = disc.plan(sel_t.labels, (h, w), label_maps=sel_t.downsampled)
        out_s, out_t = disc.forward_domains(feat_s.detach(), plan_s, feat_t.detach(), plan_t)
        loss_d = sd.discriminator_loss(out_s, out_t, sel_t.tau)
        loss_d.backward()

        opt.step()
        opt_d.step()
        row = {"iteration": it, "loss_seg": loss_seg.item(), "loss_adv": loss_adv.item(),
               "loss_d": loss_d.item(), "kept": int(sel_t.counts.sum())}
        history.append(row)
        if it % args.print_every == 0 or it == args.iterations - 1:
            print("iter {iteration:5d}  loss_seg {loss_seg:.3f}  loss_adv {loss_adv:.4f}  loss_d {loss_d:.4f}  "
                  "kept {kept}".format(**row), flush=True)
    return history


if __name__ == "__main__":
    main()
