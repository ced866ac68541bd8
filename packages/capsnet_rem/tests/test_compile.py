"""``CapsuleClassifier(compile_net=True)``: same outputs and gradients as the eager network, same checkpoint keys."""

import copy

import torch
from capsnet_rem.capsules import margin_loss, reconstruction_loss
from capsnet_rem.lightning_module import CapsuleClassifier


def test_compiled_network_matches_eager_outputs_and_gradients(small_capsnet):
    net = small_capsnet(primary_types=4, decoder=True)
    eager = CapsuleClassifier(net)
    compiled = CapsuleClassifier(copy.deepcopy(net), compile_net=True)
    assert isinstance(compiled._run_net, torch._dynamo.eval_frame.OptimizedModule)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." copies in checkpoints
    x = torch.rand(6, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    outs = []
    for module in (eager, compiled):
        out = module(x, y)
        (margin_loss(out.lengths, y) + 0.0005 * reconstruction_loss(out.reconstruction, x)).backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].lengths, outs[0].lengths, atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[1].coupling, outs[0].coupling, atol=1e-5, rtol=0)
    for (name, p), q in zip(eager.net.named_parameters(), compiled.net.parameters(), strict=True):
        scale = float(p.grad.abs().max()) or 1.0
        torch.testing.assert_close(q.grad / scale, p.grad / scale, atol=1e-5, rtol=0, msg=name)
