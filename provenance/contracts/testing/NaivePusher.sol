// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Benchmark baseline: the naive design that pushes one transfer per contributor.
contract NaivePusher {
    error LengthMismatch();
    error TransferFailed(address to);

    function push(address[] calldata recipients, uint256[] calldata amounts) external payable {
        if (recipients.length != amounts.length) revert LengthMismatch();
        for (uint256 i = 0; i < recipients.length; ++i) {
            (bool ok,) = recipients[i].call{value: amounts[i]}("");
            if (!ok) revert TransferFailed(recipients[i]);
        }
    }
}
